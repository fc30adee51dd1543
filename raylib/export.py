"""Pre-annotations for the annotators, in the files their tools import (all in the round's
`preannotations/` folder; names in `raylib.paths`):

    <image_id>.xml                   Pascal VOC, as the devkit writes it, plus <confidence> (seed figure 6.3)
    preannotations_coco.json         COCO with real file names (`coco.file_name`) and sizes, `score` per box
    preannotations_labelstudio.json  Label Studio tasks with predictions, image URLs it can serve
    label_config.xml                 the Label Studio labelling config for our classes
    selected_uris.txt                the selected images' URIs, one a line (to build a CVAT task, or copy)
    preannotations_cvat_voc.zip      CVAT's "PASCAL VOC 1.1" import layout (`raylib.formats.cvat`)

Above SPLIT_FILES_ABOVE selected images (a take-all round of a large pool), the COCO file, the Label
Studio tasks and the CVAT zip are written per scoring part instead, `<name>-part-NNNNN.<ext>`
(`paths.export_part_name`): one file of a million images would be gigabytes, past what the tools
import. COCO ids stay unique across the part files.

Confidence is the detection's cls_conf x loc_conf whatever the selection strategy, so annotators see
the model's certainty rather than, say, an entropy score. File names come from image ids validated
by `paths.safe_relpath`: an id that would leave the output folder is skipped and reported.

How it scales: the selection is split by scoring part once (a hash join on the driver); each part is
one Ray task that sorts its detections once (image, then score) and builds every format's text from
arrays, writes its XML files from a thread pool, and writes its pieces of the single-file formats as
finished bytes. COCO ids run across parts, so a first, cheap pass counts each part's images and boxes.
The driver joins the pieces with a byte copy, one piece in memory at a time.
"""
from __future__ import annotations

import datetime as dt
import heapq
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylib import runtime, storage
from raylib.formats import coco, cvat, labelstudio, voc
from raylib.paths import (COCO_FILE, CVAT_ZIP_FILE, EXPORT_MARKER, EXPORT_PARTS_DIR, LABEL_CONFIG_FILE,
                          LABELSTUDIO_FILE, SELECTED_URIS_FILE, SKIPPED_FILE, UnsafeIdError, export_part_name,
                          voc_preannotation)

log = logging.getLogger(__name__)

MARKER = EXPORT_MARKER
DETECTION_COLUMNS = ["image_id", "class_id", "cls_conf", "loc_conf", "x1", "y1", "x2", "y2"]
STATUS_COLUMNS = ["image_id", "uri", "width", "height"]
# Below this many selected images, starting a Ray task per part costs more than the work (seconds of
# worker start-up against milliseconds per image): the parts run in this process.
MIN_IMAGES_FOR_TASKS = 2_000
# Above this many selected images, COCO / Label Studio / CVAT files per part (module docstring): the
# COCO file of 10^5 images is ~220 MB, near what annotation tools accept in one import.
SPLIT_FILES_ABOVE = 100_000
WRITE_THREADS = 16  # concurrent S3 PUTs in a task: their latency, not CPU, is the bound


@dataclass(frozen=True)
class PartJob:
    index: int  # the scoring part: image_status/part-i and detections/part-i hold the same images
    status_uri: str
    detections_uri: str
    image_ids: pa.Array  # the part's selected images, sorted, unique


@dataclass(frozen=True)
class ExportSettings:
    class_names: list[str]
    out_dir: str
    analysis_time: str
    round_idx: int
    document_root: str | None  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT (`labelstudio.image_url`)
    per_part: bool  # COCO / Label Studio / CVAT files per part (above SPLIT_FILES_ABOVE)

    def piece(self, index: int, kind: str) -> str:
        """Part `index`'s piece of a single-file format, joined by the driver then removed."""
        return storage.join(self.out_dir, EXPORT_PARTS_DIR, f"part-{index:05d}.{kind}")


def image_sizes(status: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Width and height (int64, 0: unknown) of each image of image_status rows: the one place export
    learns sizes. Scoring recorded them from the header; an image whose header could not be read
    (take-all selects error rows too) is tried once more here, and written with size 0 if that fails."""
    widths = status.column("width").fill_null(0).to_numpy().astype(np.int64)
    heights = status.column("height").fill_null(0).to_numpy().astype(np.int64)
    unknown = np.flatnonzero((widths == 0) | (heights == 0)).tolist()
    if unknown:
        from raylib import images  # torchvision: seconds and ~600 MB for a task that rarely needs it
    for n in unknown:
        image_id, uri = status.column("image_id")[n].as_py(), status.column("uri")[n].as_py()
        try:
            widths[n], heights[n] = images.header_size(storage.read_bytes(uri), image_id)
        except (images.ImageError, OSError, TypeError) as exc:
            log.warning("pre-annotation of %s without image size: %s", image_id, exc)
            widths[n], heights[n] = 0, 0
    return widths, heights


def _start_export(out_dir: str) -> None:
    """Clear what an earlier (crashed or superseded) export left in `out_dir`, then mark the folder.

    Only a folder that carries our marker (or is empty) is cleared: a mistyped out_dir pointing at,
    say, a VOC Annotations folder is refused instead of emptied."""
    # A kill while the marker itself was being written leaves only its temporary sibling: ours too.
    foreign = [f for f in storage.list_files(out_dir) if not f.rsplit("/", 1)[-1].startswith(EXPORT_MARKER)]
    if foreign and not storage.exists(storage.join(out_dir, EXPORT_MARKER)):
        raise ValueError(f"pre-annotation folder '{out_dir}' holds {len(foreign)} file(s) that no export "
                         "wrote; refusing to clear it: choose an empty or new folder")
    storage.delete(out_dir)
    storage.write_text(storage.join(out_dir, EXPORT_MARKER), "raylib pre-annotation export\n")


def _folder_name(uri: str) -> str:
    parts = uri.rstrip("/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def export_preannotations(selection_uri: str, detections_uri: str, status_uri: str, class_names: list[str],
                          out_dir: str, round_idx: int, labelstudio_document_root: str | None = None) -> int:
    """Write the pre-annotations of a round's selected images into `out_dir` (files in the module
    docstring); returns the number of XML files written.

    One Ray task per scoring part (image_status/part-i + detections/part-i hold the same images);
    without a running Ray, or for fewer than MIN_IMAGES_FOR_TASKS images, the parts run in this
    process. The driver holds the selection's ids as Arrow (for the split) and one piece at a time.
    Each XML holds every kept detection of its image, most confident first. Ids refused by
    `safe_relpath`, and images Label Studio could not be given a URL for, are listed with the reason
    in `<out_dir>/skipped.json`. `labelstudio_document_root`: Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    for local images (`labelstudio.image_url`)."""
    _start_export(out_dir)
    jobs, n_selected = split_by_part(selection_uri, status_uri, detections_uri)
    n_found = sum(len(job.image_ids) for job in jobs)
    settings = ExportSettings(class_names, out_dir, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              round_idx, labelstudio_document_root, per_part=n_found > SPLIT_FILES_ABOVE)
    in_tasks = ray.is_initialized() and n_found >= MIN_IMAGES_FOR_TASKS
    counts = _map(count_part, [(job,) for job in jobs], in_tasks)
    image_offsets = [0, *itertools.accumulate(n_images for n_images, _ in counts)]
    annotation_offsets = [0, *itertools.accumulate(n_annotations for _, n_annotations in counts)]
    parts = _map(export_part, [(job, settings, image_offsets[n], annotation_offsets[n]) for n, job in enumerate(jobs)],
                 in_tasks)
    changed = [job.index for job, count, part in zip(jobs, counts, parts)
               if count != (part["n_images"], part["n_annotations"])]
    if changed:  # COCO ids would collide: scoring rewrote a part while we read it
        raise RuntimeError(f"export of '{out_dir}': scoring parts {changed[:3]} changed during the export; "
                           "rerun the export once scoring has finished")
    indices = [job.index for job in jobs]
    storage.write_chunks(storage.join(out_dir, SELECTED_URIS_FILE), _joined(settings, indices, "uris", b""))
    if not settings.per_part:
        info = {"description": f"raylib pre-annotations, round {round_idx}", "date_created": settings.analysis_time}
        storage.write_chunks(storage.join(out_dir, COCO_FILE), itertools.chain(
            [coco.preannotation_head(class_names, info)], _joined(settings, indices, "coco_images"),
            [coco.IMAGES_TO_ANNOTATIONS], _joined(settings, indices, "coco_annotations"), [coco.TAIL]))
        storage.write_chunks(storage.join(out_dir, LABELSTUDIO_FILE),
                             itertools.chain([b"["], _joined(settings, indices, "labelstudio"), [b"]"]))
        storage.write_chunks(storage.join(out_dir, CVAT_ZIP_FILE), _cvat_zip_chunks(settings, indices))
    storage.write_text(storage.join(out_dir, LABEL_CONFIG_FILE), labelstudio.label_config(class_names))
    storage.delete(storage.join(out_dir, EXPORT_PARTS_DIR))
    skipped = {image_id: reason for part in parts for image_id, reason in part["skipped"].items()}
    if skipped:
        log.warning("round %d: %d selected image(s) not (fully) exported: %s", round_idx, len(skipped),
                    list(skipped)[:3])
        storage.write_text(storage.join(out_dir, SKIPPED_FILE), json.dumps(skipped, indent=1))
    if n_selected - n_found:  # never seen: every pool image has a status row
        log.warning("round %d: %d selected image(s) have no image_status row; not exported", round_idx,
                    n_selected - n_found)
    if settings.per_part:
        log.info("round %d: %d images: COCO, Label Studio and CVAT files per scoring part (%s)", round_idx,
                 n_found, export_part_name(COCO_FILE, 0))
    return sum(part["written"] for part in parts)


def _map(function: Callable, calls: list[tuple], in_tasks: bool) -> list:
    """`function(*args)` for each args: one Ray task of half a CPU each, or in this process."""
    return list(runtime.in_tasks(function, calls, num_cpus=0.5, big_enough=in_tasks))


def split_by_part(selection_uri: str, status_uri: str, detections_uri: str) -> tuple[list[PartJob], int]:
    """The selected images of each scoring part (parts without any left out), and the number of
    distinct selected images. One hash join of the parts' image ids with the selection: the driver
    reads ids only."""
    selected = pc.unique(storage.read_table(selection_uri, columns=["image_id"]).column("image_id"))
    status_files = storage.list_files(status_uri, ".parquet")
    index = pa.concat_tables([_part_ids(uri, n) for n, uri in enumerate(status_files)]
                             or [pa.table({"image_id": pa.array([], pa.string()), "part": pa.array([], pa.int32())})])
    found = index.join(pa.table({"image_id": selected}), "image_id", join_type="left semi")
    found = found.sort_by([("part", "ascending"), ("image_id", "ascending")])
    part_of, ids = found.column("part").to_numpy(), found.column("image_id").combine_chunks()
    bounds = np.searchsorted(part_of, np.arange(len(status_files) + 1))
    # `take`, not `slice`: a pickled slice carries its whole parent's buffers (every part's ids, per task).
    jobs = [PartJob(n, uri, storage.join(detections_uri, uri.rsplit("/", 1)[-1]), ids.take(np.arange(lo, hi)))
            for n, (uri, lo, hi) in enumerate(zip(status_files, bounds[:-1].tolist(), bounds[1:].tolist())) if hi > lo]
    return jobs, len(selected)


def _part_ids(uri: str, part: int) -> pa.Table:
    ids = storage.read_table(uri, columns=["image_id"]).column("image_id")
    return pa.table({"image_id": ids, "part": pa.array(np.full(len(ids), part, np.int32))})


def _rows(uri: str, columns: list[str], image_ids: pa.Array) -> pa.Table:
    """The rows of one Parquet file whose image_id is in `image_ids` (none if the file is absent)."""
    if not storage.exists(uri):
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = storage.read_table(uri, columns=columns)
    return table.filter(pc.is_in(table.column("image_id"), value_set=image_ids))


def _safe(image_ids: list[str]) -> tuple[list[int], list[str], dict[str, str]]:
    """The positions and XML paths of the ids `safe_relpath` accepts, and the refused ones with the reason."""
    kept, relpaths, refused = [], [], {}
    for n, image_id in enumerate(image_ids):
        try:
            relpaths.append(voc_preannotation(image_id))
            kept.append(n)
        except UnsafeIdError as exc:
            refused[image_id] = str(exc)
    return kept, relpaths, refused


def count_part(job: PartJob) -> tuple[int, int]:
    """The images and boxes `export_part` will write for `job`: COCO ids run across parts."""
    kept, _, _ = _safe(job.image_ids.to_pylist())
    exported = job.image_ids.take(pa.array(kept, pa.int64()))
    if not storage.exists(job.detections_uri):
        return len(kept), 0
    detection_ids = storage.read_table(job.detections_uri, columns=["image_id"]).column("image_id")
    return len(kept), pc.sum(pc.is_in(detection_ids, value_set=exported)).as_py() or 0


def export_part(job: PartJob, settings: ExportSettings, image_offset: int, annotation_offset: int) -> dict:
    """The selected images of one scoring part: their XML files, and their piece of the COCO file, the
    Label Studio tasks, the URI list and the CVAT zip (whole files per part when `settings.per_part`).
    COCO images are numbered from image_offset + 1, annotations from annotation_offset + 1."""
    status = _rows(job.status_uri, STATUS_COLUMNS, job.image_ids)
    status = status.take(pc.sort_indices(status, [("image_id", "ascending")]))
    kept, relpaths, skipped = _safe(status.column("image_id").to_pylist())
    status = status.take(pa.array(kept, pa.int64()))
    image_ids, status_uris = status.column("image_id").to_pylist(), status.column("uri").to_pylist()
    uris = [uri or image_id for image_id, uri in zip(image_ids, status_uris)]  # the id: relative to the pool
    widths, heights = image_sizes(status)
    file_names = [coco.file_name(image_id, uri) for image_id, uri in zip(image_ids, status_uris)]
    boxes = _Boxes.of(_rows(job.detections_uri, DETECTION_COLUMNS, status.column("image_id").combine_chunks()),
                      status.column("image_id").combine_chunks(), len(settings.class_names))
    order = boxes.order
    bounds = np.searchsorted(boxes.image[order], np.arange(len(image_ids) + 1))
    xml = voc.write_voc_preannotations(file_names, [_folder_name(uri or "") for uri in status_uris], widths, heights, bounds,
                                       boxes.class_id[order], boxes.xyxy[order], boxes.score[order],
                                       settings.class_names, settings.analysis_time)
    coco_images = coco.preannotation_images(image_offset + 1, file_names, widths, heights)
    coco_annotations = coco.preannotation_annotations(annotation_offset + 1, boxes.image + image_offset + 1,
                                                      boxes.class_id, boxes.xyxy, boxes.score)
    servable, urls = [], []
    for n, (image_id, uri) in enumerate(zip(image_ids, uris)):
        try:
            urls.append(labelstudio.image_url(uri, settings.document_root))
            servable.append(n)
        except ValueError as exc:
            skipped[image_id] = f"not in the Label Studio tasks: {exc}"
    tasks = labelstudio.preannotation_tasks(servable, urls, image_ids, widths, heights, bounds, boxes.class_id[order],
                                            boxes.xyxy[order], boxes.score[order], settings.class_names,
                                            f"raylib round {settings.round_idx}")
    members, items = cvat.annotation_members(dict(zip(file_names, xml)))
    files = [(storage.join(settings.out_dir, relpath), data) for relpath, data in zip(relpaths, xml)]
    files.append((settings.piece(job.index, "uris"), "".join(f"{uri}\n" for uri in uris).encode()))
    if settings.per_part:
        info = {"description": f"raylib pre-annotations, round {settings.round_idx}, part {job.index}",
                "date_created": settings.analysis_time}
        files += [(_part_file(settings, COCO_FILE, job.index),
                   b"".join([coco.preannotation_head(settings.class_names, info), coco_images,
                             coco.IMAGES_TO_ANNOTATIONS, coco_annotations, coco.TAIL])),
                  (_part_file(settings, LABELSTUDIO_FILE, job.index), b"[" + tasks + b"]"),
                  (_part_file(settings, CVAT_ZIP_FILE, job.index),
                   cvat.voc_zip(dict(zip(file_names, xml)), settings.class_names, settings.analysis_time))]
    else:
        blob, entries = cvat.local_entries(members, settings.analysis_time)
        files += [(settings.piece(job.index, "coco_images"), coco_images),
                  (settings.piece(job.index, "coco_annotations"), coco_annotations),
                  (settings.piece(job.index, "labelstudio"), tasks), (settings.piece(job.index, "cvat"), blob),
                  (settings.piece(job.index, "cvat.json"), json.dumps({"entries": entries, "items": items}).encode())]
    if storage.is_s3(settings.out_dir):
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            list(pool.map(lambda file: storage.write_bytes(*file), files))
    else:  # a local disk: threads only contend (measured on cpu-2: 16 threads 2x slower than one)
        for uri, data in files:
            storage.write_bytes(uri, data)
    return {"n_selected": len(job.image_ids), "n_images": len(image_ids), "n_annotations": len(boxes.image),
            "written": len(image_ids), "skipped": skipped}


def _part_file(settings: ExportSettings, name: str, index: int) -> str:
    return storage.join(settings.out_dir, export_part_name(name, index))


@dataclass(frozen=True)
class _Boxes:
    """A part's detections of its exported images, in file order (COCO's annotation order)."""
    image: np.ndarray  # position of the box's image among the exported images (sorted by id)
    class_id: np.ndarray  # int64
    xyxy: np.ndarray  # (n, 4) float64, pixel-edge
    score: np.ndarray  # float64 of cls_conf x loc_conf, multiplied in float32 as stored

    @classmethod
    def of(cls, detections: pa.Table, image_ids: pa.Array, n_classes: int) -> _Boxes:
        image = pc.index_in(detections.column("image_id"), value_set=image_ids).to_numpy(zero_copy_only=False)
        class_id = detections.column("class_id").to_numpy(zero_copy_only=False).astype(np.int64)
        bad = (class_id < 0) | (class_id >= n_classes)
        if bad.any():
            raise ValueError(f"detections have class_id {int(class_id[bad][0])} outside 0..{n_classes - 1}")
        conf = [detections.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in ("cls_conf", "loc_conf")]
        xyxy = np.stack([detections.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                         for c in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1, 4)
        return cls(image.astype(np.int64), class_id, xyxy, (conf[0] * conf[1]).astype(np.float64))

    @property
    def order(self) -> np.ndarray:
        """By image, then most confident first; ties in file order."""
        return np.lexsort((-self.score, self.image))


def _joined(settings: ExportSettings, indices: list[int], kind: str, separator: bytes = b",") -> Iterator[bytes]:
    """The parts' pieces of one kind, joined by `separator` (empty pieces left out), one in memory at a time."""
    first = True
    for index in indices:
        data = storage.read_bytes(settings.piece(index, kind))
        if data:
            if not first:
                yield separator
            yield data
            first = False


def _cvat_zip_chunks(settings: ExportSettings, indices: list[int]) -> Iterator[bytes]:
    """The parts' CVAT entries as one zip: their bytes copied, then the item list, the labelmap and the
    central directory (`raylib.formats.cvat`)."""
    offset, entries, item_lists = 0, [], []
    for index in indices:
        blob = storage.read_bytes(settings.piece(index, "cvat"))
        meta = json.loads(storage.read_bytes(settings.piece(index, "cvat.json")))
        entries += [[*entry[:5], entry[5] + offset] for entry in meta["entries"]]
        item_lists.append(meta["items"])
        yield blob
        offset += len(blob)
    blob, tail = cvat.local_entries(cvat.tail_members(heapq.merge(*item_lists), settings.class_names),
                                    settings.analysis_time)
    entries += [[*entry[:5], entry[5] + offset] for entry in tail]
    yield blob
    yield cvat.central_directory(entries, offset + len(blob), settings.analysis_time)
