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
import json
import logging
import zipfile
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raylib import coco, images, labelstudio, pool, storage
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


def _selected_detections(detections_uri: str, selected: set[str]) -> pd.DataFrame:
    """Detections of the selected images only, streamed file by file."""
    wanted = pa.array(sorted(selected), pa.string())
    frames = [
        batch.filter(pc.is_in(batch.column("image_id"), value_set=wanted)).to_pandas()
        for batch in storage.iter_parquet_batches(detections_uri, columns=DETECTION_COLUMNS)
    ]
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class ImageInfo:
    uri: str
    width: int  # 0: unknown
    height: int


def image_info(manifest_uri: str, selected: set[str], status_uri: str | None = None) -> dict[str, ImageInfo]:
    """URI and size of each selected image: the one place export learns sizes. From the manifest's
    width/height, else the round's image_status (scoring records each image's header size), else the
    image header (one read per image: only for images scored before sizes were recorded)."""
    wanted = pa.array(sorted(selected), pa.string())
    found: dict[str, ImageInfo] = {}
    for batch in pool.iter_manifest(manifest_uri):
        for row in batch.filter(pc.is_in(batch.column("image_id"), value_set=wanted)).to_pylist():
            found[row["image_id"]] = ImageInfo(row["uri"], int(row["width"] or 0), int(row["height"] or 0))
    unsized = pa.array(sorted(i for i, info in found.items() if not info.width or not info.height), pa.string())
    if len(unsized) and status_uri and storage.exists(status_uri):
        for batch in storage.iter_parquet_batches(status_uri):
            if "width" not in batch.schema.names:  # image_status of a run before sizes were recorded
                break
            rows = batch.filter(pc.is_in(batch.column("image_id"), value_set=unsized))
            for image_id, width, height in zip(*(rows.column(c).to_pylist() for c in ("image_id", "width", "height"))):
                if width and height:
                    found[image_id] = ImageInfo(found[image_id].uri, int(width), int(height))
    for image_id, info in list(found.items()):
        if not info.width or not info.height:
            try:
                width, height = images.header_size(storage.read_bytes(info.uri), image_id)
            except (images.ImageError, OSError) as exc:
                log.warning("pre-annotation of %s without image size: %s", image_id, exc)
                width, height = 0, 0
            found[image_id] = ImageInfo(info.uri, int(width), int(height))
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


def cvat_voc_zip(xml_by_file_name: dict[str, bytes], class_names: list[str]) -> bytes:
    """A zip in the layout CVAT's "PASCAL VOC 1.1" import reads (Datumaro's VOC format):
    Annotations/<item>.xml, ImageSets/Main/default.txt (the items), labelmap.txt (`name:color:parts:actions`)."""
    items = {cvat_item(name): data for name, data in xml_by_file_name.items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item, data in sorted(items.items()):
            archive.writestr(f"Annotations/{item}.xml", data)
        archive.writestr("ImageSets/Main/default.txt", "".join(f"{item}\n" for item in sorted(items)))
        archive.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n"
                         + "".join(f"{name}:::\n" for name in class_names))
    return buffer.getvalue()


def export_preannotations(selection_uri: str, detections_uri: str, manifest_uri: str, class_names: list[str],
                          out_dir: str, round_idx: int, labelstudio_document_root: str | None = None,
                          status_uri: str | None = None) -> int:
    """Write the pre-annotations of a round's selected images into `out_dir` (files in the module
    docstring).

    Each XML holds every kept detection of its image (the detections Parquet streamed, filtered to
    the selected ids), most confident first. Returns the number of XML files written; ids refused by
    `safe_relpath`, and images Label Studio could not be given a URL for, are listed with the reason
    in `<out_dir>/skipped.json`. `labelstudio_document_root`: Label Studio's
    LOCAL_FILES_DOCUMENT_ROOT for local images (`labelstudio.image_url`). `status_uri`: the round's
    image_status, where scoring recorded each image's size."""
    _start_export(out_dir)
    selected = set(storage.read_table(selection_uri, columns=["image_id"]).column("image_id").to_pylist())
    detections = _selected_detections(detections_uri, selected)
    detections["score"] = detections["cls_conf"] * detections["loc_conf"]
    info = image_info(manifest_uri, selected, status_uri)
    analysis_time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    written, skipped, exported, xml_by_file_name = 0, {}, [], {}
    for image_id in sorted(selected):
        try:
            relpath = safe_relpath(image_id)
        except UnsafeIdError as exc:
            skipped[image_id] = str(exc)
            continue
        image = info.get(image_id, ImageInfo("", 0, 0))
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
        written += 1
    ids = {image["image_id"] for image in exported}
    dets = detections[detections["image_id"].isin(ids)]
    document = coco.detections_to_coco(exported, dets, class_names)
    document["info"] = {"description": f"raylib pre-annotations, round {round_idx}", "date_created": analysis_time}
    storage.write_text(storage.join(out_dir, COCO_FILE), json.dumps(document))
    servable = []
    for image in exported:
        try:
            labelstudio.image_url(image["uri"], labelstudio_document_root)
            servable.append(image)
        except ValueError as exc:
            skipped[image["image_id"]] = f"not in the Label Studio tasks: {exc}"
    tasks = labelstudio.detections_to_tasks(servable, dets, class_names, f"raylib round {round_idx}",
                                            labelstudio_document_root)
    storage.write_text(storage.join(out_dir, LABELSTUDIO_FILE), json.dumps(tasks))
    storage.write_text(storage.join(out_dir, LABEL_CONFIG_FILE), labelstudio.label_config(class_names))
    storage.write_text(storage.join(out_dir, SELECTED_URIS_FILE), "".join(f"{image['uri']}\n" for image in exported))
    storage.write_bytes(storage.join(out_dir, CVAT_ZIP_FILE), cvat_voc_zip(xml_by_file_name, class_names))
    if skipped:
        log.warning("round %d: %d selected image(s) not (fully) exported: %s", round_idx, len(skipped),
                    list(skipped)[:3])
        storage.write_text(storage.join(out_dir, SKIPPED_FILE), json.dumps(skipped, indent=1))
    return written
