"""Pre-annotations for the annotators, in the files their tools import (all in the round's
`preannotations/` folder; names below):

    <image_id>.xml                   Pascal VOC, as the devkit writes it, plus <confidence> (seed figure 6.3)
    preannotations_coco.json         COCO with real file names (`coco.file_name`) and sizes, `score` per box
    preannotations_labelstudio.json  Label Studio tasks with predictions, image URLs it can serve
    label_config.xml                 the Label Studio labelling config for our classes
    selected_uris.txt                the selected images' URIs, one a line (to build a CVAT task, or copy)
    preannotations_cvat_voc.zip      CVAT's "PASCAL VOC 1.1" import layout: Annotations/<item>.xml,
                                     ImageSets/Main/default.txt, labelmap.txt; <item> is the file name
                                     without its extension, which CVAT matches to the task's frame names

Confidence is the detection's cls_conf x loc_conf whatever the selection strategy, so annotators see
the model's certainty rather than, say, an entropy score. File names come from image ids validated
by `paths.safe_relpath`: an id that would leave the output folder is skipped and reported.
"""
from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylib import coco, images, labelstudio, storage
from raylib.paths import UnsafeIdError, safe_relpath
from raylib.voc import VocAnnotation, VocObject, write_voc

log = logging.getLogger(__name__)

# File names in the export folder (candidates for paths.RoundPaths).
COCO_FILE = "preannotations_coco.json"
LABELSTUDIO_FILE = "preannotations_labelstudio.json"
LABEL_CONFIG_FILE = "label_config.xml"
SELECTED_URIS_FILE = "selected_uris.txt"
CVAT_ZIP_FILE = "preannotations_cvat_voc.zip"
SKIPPED_FILE = "skipped.json"

DETECTION_COLUMNS = ["image_id", "class_id", "cls_conf", "loc_conf", "x1", "y1", "x2", "y2"]
STATUS_COLUMNS = ["image_id", "uri", "width", "height"]
# Below this many selected images, starting a Ray task per part costs more than the work (seconds of
# worker start-up against milliseconds per image): the parts run in this process.
MIN_IMAGES_FOR_TASKS = 2_000
PARTS_DIR = ".parts"  # each part's COCO/Label Studio/URI pieces and CVAT zip, merged then removed


@dataclass(frozen=True)
class ImageInfo:
    uri: str
    width: int  # 0: unknown
    height: int


def _selected_rows(uri: str, columns: list[str], selected: pa.Array) -> pa.Table:
    """The rows of one Parquet file whose image_id is in `selected` (none if the file is absent)."""
    if not storage.exists(uri):
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = storage.read_table(uri, columns=columns)
    return table.filter(pc.is_in(table.column("image_id"), value_set=selected))


def image_info(status: pa.Table) -> dict[str, ImageInfo]:
    """URI and size of each image of a part's image_status rows: the one place export learns sizes.
    Scoring recorded them from the header; an image whose header could not be read (take-all selects
    error rows too) is tried once more here, and written with size 0 if that fails."""
    found: dict[str, ImageInfo] = {}
    for row in status.to_pylist():
        image_id, width, height = row["image_id"], int(row["width"] or 0), int(row["height"] or 0)
        if not width or not height:
            try:
                width, height = images.header_size(storage.read_bytes(row["uri"]), image_id)
            except (images.ImageError, OSError) as exc:
                log.warning("pre-annotation of %s without image size: %s", image_id, exc)
                width, height = 0, 0
        found[image_id] = ImageInfo(row["uri"] or "", int(width), int(height))
    return found


MARKER = ".raylib-preannotations"  # written first: this folder is an export and may be cleared


def _start_export(out_dir: str) -> None:
    """Clear what an earlier (crashed or superseded) export left in `out_dir`, then mark the folder.

    Only a folder that carries our marker (or is empty) is cleared: a mistyped out_dir pointing at,
    say, a VOC Annotations folder is refused instead of emptied."""
    # A kill while the marker itself was being written leaves only its temporary sibling: ours too.
    foreign = [f for f in storage.list_files(out_dir) if not f.rsplit("/", 1)[-1].startswith(MARKER)]
    if foreign and not storage.exists(storage.join(out_dir, MARKER)):
        raise ValueError(f"pre-annotation folder '{out_dir}' holds {len(foreign)} file(s) that no export "
                         "wrote; refusing to clear it: choose an empty or new folder")
    storage.delete(out_dir)
    storage.write_text(storage.join(out_dir, MARKER), "raylib pre-annotation export\n")


def _folder_name(uri: str) -> str:
    parts = uri.rstrip("/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def cvat_item(file_name: str) -> str:
    """CVAT's item id for an image: its file name without the extension."""
    base = file_name.rsplit("/", 1)[-1]
    return file_name[: len(file_name) - len(base) + base.rfind(".")] if "." in base.lstrip(".") else file_name


def _labelmap(class_names: list[str]) -> str:
    return "# label:color_rgb:parts:actions\n" + "".join(f"{name}:::\n" for name in class_names)


def cvat_voc_zip(xml_by_file_name: dict[str, bytes], class_names: list[str]) -> bytes:
    """A zip in the layout CVAT's "PASCAL VOC 1.1" import reads (Datumaro's VOC format):
    Annotations/<item>.xml, ImageSets/Main/default.txt (the items), labelmap.txt (`name:color:parts:actions`)."""
    items = {cvat_item(name): data for name, data in xml_by_file_name.items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item, data in sorted(items.items()):
            archive.writestr(f"Annotations/{item}.xml", data)
        archive.writestr("ImageSets/Main/default.txt", "".join(f"{item}\n" for item in sorted(items)))
        archive.writestr("labelmap.txt", _labelmap(class_names))
    return buffer.getvalue()


def export_preannotations(selection_uri: str, detections_uri: str, status_uri: str, class_names: list[str],
                          out_dir: str, round_idx: int, labelstudio_document_root: str | None = None) -> int:
    """Write the pre-annotations of a round's selected images into `out_dir` (files in the module
    docstring); returns the number of XML files written.

    The work is split by scoring's output parts (image_status/part-i + detections/part-i hold the same
    images): one Ray task per part writes its images' XML and its piece of the single-file formats, and
    the pieces are streamed into those files one at a time, so neither the selection's detections nor
    its images are ever held in one process (the take-all round selects the whole pool). Without a
    running Ray, or for fewer than MIN_IMAGES_FOR_TASKS images, the parts run in this process. Each
    XML holds every kept detection of its image, most confident first. Ids refused by `safe_relpath`,
    and images Label Studio could not be given a URL for, are listed with the reason in
    `<out_dir>/skipped.json`. `labelstudio_document_root`: Label Studio's LOCAL_FILES_DOCUMENT_ROOT for
    local images (`labelstudio.image_url`)."""
    _start_export(out_dir)
    selected = pa.array(sorted(set(storage.read_table(selection_uri, columns=["image_id"])
                                   .column("image_id").to_pylist())), pa.string())
    analysis_time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    parts_dir = storage.join(out_dir, PARTS_DIR)
    status_files = storage.list_files(status_uri, ".parquet")
    if ray.is_initialized() and len(selected) >= MIN_IMAGES_FOR_TASKS:
        export = ray.remote(num_cpus=0.5)(export_part)
        selected_ref = ray.put(selected)
        pieces = ray.get([export.remote(uri, storage.join(detections_uri, uri.rsplit("/", 1)[-1]), selected_ref,
                                        class_names, out_dir, storage.join(parts_dir, f"part-{i:05d}"),
                                        analysis_time, round_idx, labelstudio_document_root)
                          for i, uri in enumerate(status_files)])
    else:
        pieces = [export_part(uri, storage.join(detections_uri, uri.rsplit("/", 1)[-1]), selected, class_names,
                              out_dir, storage.join(parts_dir, f"part-{i:05d}"), analysis_time, round_idx,
                              labelstudio_document_root)
                  for i, uri in enumerate(status_files)]
    parts, pieces = pieces, [piece for piece in pieces if "piece" in piece]
    info = {"description": f"raylib pre-annotations, round {round_idx}", "date_created": analysis_time}
    storage.write_chunks(storage.join(out_dir, COCO_FILE), _coco_chunks(pieces, class_names, info))
    storage.write_chunks(storage.join(out_dir, LABELSTUDIO_FILE), _json_list_chunks(pieces, "tasks"))
    storage.write_chunks(storage.join(out_dir, SELECTED_URIS_FILE),
                         ("".join(f"{uri}\n" for uri in _piece(p)["uris"]).encode() for p in pieces))
    storage.write_text(storage.join(out_dir, LABEL_CONFIG_FILE), labelstudio.label_config(class_names))
    _write_cvat_zip(pieces, class_names, storage.join(out_dir, CVAT_ZIP_FILE))
    storage.delete(parts_dir)
    skipped = {image_id: reason for part in parts for image_id, reason in part["skipped"].items()}
    if skipped:
        log.warning("round %d: %d selected image(s) not (fully) exported: %s", round_idx, len(skipped),
                    list(skipped)[:3])
        storage.write_text(storage.join(out_dir, SKIPPED_FILE), json.dumps(skipped, indent=1))
    missing = len(selected) - sum(part["n_selected"] for part in parts)
    if missing:  # never seen: every pool image has a status row
        log.warning("round %d: %d selected image(s) have no image_status row; not exported", round_idx, missing)
    return sum(part["written"] for part in parts)


def export_part(status_uri: str, detections_uri: str, selected: pa.Array, class_names: list[str], out_dir: str,
                piece_uri: str, analysis_time: str, round_idx: int, document_root: str | None) -> dict:
    """The selected images of one scoring part: their XML files, and their piece of the COCO file, the
    Label Studio tasks, the URI list (`<piece_uri>.json`) and the CVAT zip (`<piece_uri>.zip`)."""
    status = _selected_rows(status_uri, STATUS_COLUMNS, selected)
    if status.num_rows == 0:
        return {"n_selected": 0, "n_images": 0, "n_annotations": 0, "written": 0, "skipped": {}}
    detections = _selected_rows(detections_uri, DETECTION_COLUMNS, status.column("image_id")).to_pandas()
    if not len(detections):
        detections = pd.DataFrame(columns=DETECTION_COLUMNS)
    detections["score"] = detections["cls_conf"] * detections["loc_conf"]
    info = image_info(status)
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    skipped, exported, xml_by_file_name = {}, [], {}
    for image_id in sorted(info):
        try:
            relpath = safe_relpath(image_id)
        except UnsafeIdError as exc:
            skipped[image_id] = str(exc)
            continue
        image = info[image_id]
        name = coco.file_name(relpath, image.uri)
        rows = by_image.get(image_id, pd.DataFrame(columns=detections.columns))
        objects = [
            VocObject(name=class_names[int(r.class_id)], x1=float(r.x1), y1=float(r.y1), x2=float(r.x2),
                      y2=float(r.y2), confidence=float(min(max(r.score, 0.0), 1.0)))
            for r in rows.sort_values("score", ascending=False).itertuples(index=False)
        ]
        annotation = VocAnnotation(filename=name, width=image.width, height=image.height, objects=objects,
                                   folder=_folder_name(image.uri))
        data = write_voc(annotation, analysis_time)
        storage.write_bytes(storage.join(out_dir, relpath + ".xml"), data)
        xml_by_file_name[name] = data
        exported.append({"image_id": image_id, "file_name": name, "width": image.width,
                         "height": image.height, "uri": image.uri or relpath})
    ids = {image["image_id"] for image in exported}
    dets = detections[detections["image_id"].isin(ids)]
    document = coco.detections_to_coco(exported, dets, class_names)
    servable = []
    for image in exported:
        try:
            labelstudio.image_url(image["uri"], document_root)
            servable.append(image)
        except ValueError as exc:
            skipped[image["image_id"]] = f"not in the Label Studio tasks: {exc}"
    tasks = labelstudio.detections_to_tasks(servable, dets, class_names, f"raylib round {round_idx}", document_root)
    storage.write_text(f"{piece_uri}.json", json.dumps({"images": document["images"], "tasks": tasks,
                                                          "annotations": document["annotations"],
                                                          "uris": [image["uri"] for image in exported]}))
    storage.write_bytes(f"{piece_uri}.zip", cvat_voc_zip(xml_by_file_name, class_names))
    return {"n_selected": status.num_rows, "n_images": len(exported), "n_annotations": len(document["annotations"]),
            "written": len(exported), "skipped": skipped, "piece": piece_uri}


def _piece(piece: dict) -> dict:
    return json.loads(storage.read_text(f"{piece['piece']}.json"))


def _json_list_chunks(pieces: list[dict], key: str) -> Iterator[bytes]:
    """A JSON list of every piece's `key` items, one piece in memory at a time."""
    yield b"["
    yield from _joined(_piece(piece)[key] for piece in pieces)
    yield b"]"


def _coco_chunks(pieces: list[dict], class_names: list[str], info: dict) -> Iterator[bytes]:
    """One COCO document from the pieces: each piece numbered its images and annotations from 1, so
    they are shifted past the pieces before it. Two passes (images, then annotations)."""
    yield (json.dumps({"info": info, "categories": coco.categories(class_names)})[:-1] + ', "images": [').encode()
    yield from _joined([{**image, "id": image["id"] + offset} for image in _piece(piece)["images"]]
                       for piece, offset in zip(pieces, _offsets(pieces, "n_images")))
    yield b'], "annotations": ['
    yield from _joined([{**a, "id": a["id"] + annotation_offset, "image_id": a["image_id"] + image_offset}
                        for a in _piece(piece)["annotations"]]
                       for piece, image_offset, annotation_offset in zip(pieces, _offsets(pieces, "n_images"),
                                                                         _offsets(pieces, "n_annotations")))
    yield b"]}"


def _offsets(pieces: list[dict], key: str) -> list[int]:
    """How many items (`key`) the pieces before each piece hold."""
    return [0, *itertools.accumulate(piece[key] for piece in pieces)][:len(pieces)]


def _joined(lists: Iterator[list]) -> Iterator[bytes]:
    """The items of several lists as the comma-separated body of one JSON list."""
    first = True
    for items in lists:
        if items:
            yield (b"" if first else b",") + ",".join(json.dumps(item) for item in items).encode()
            first = False


def _write_cvat_zip(pieces: list[dict], class_names: list[str], uri: str) -> None:
    """The pieces' zips as one, in CVAT's "PASCAL VOC 1.1" layout (`cvat_voc_zip`), built in a local
    temporary file and streamed to `uri`."""
    with tempfile.TemporaryFile() as handle:
        items: list[str] = []
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for piece in pieces:
                with zipfile.ZipFile(io.BytesIO(storage.read_bytes(f"{piece['piece']}.zip"))) as part:
                    for name in part.namelist():
                        if name.startswith("Annotations/"):
                            archive.writestr(name, part.read(name))
                            items.append(name[len("Annotations/"):-len(".xml")])
            archive.writestr("ImageSets/Main/default.txt", "".join(f"{item}\n" for item in sorted(items)))
            archive.writestr("labelmap.txt", _labelmap(class_names))
        handle.seek(0)
        storage.write_chunks(uri, iter(lambda: handle.read(1 << 20), b""))
