"""Pre-annotations for the annotators: one Pascal VOC XML per selected image with the model's kept
detections and their confidence (seed figure 6.3), plus the same as one COCO JSON and as Label Studio
tasks with predictions.

Confidence is the detection's cls_conf x loc_conf whatever the selection strategy, so annotators see
the model's certainty rather than, say, an entropy score. File names come from image ids validated
by `paths.safe_relpath`: an id that would leave the output folder is skipped and reported.
"""
from __future__ import annotations

import datetime as dt
import json
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raylib import coco, images, labelstudio, pool, storage
from raylib.paths import UnsafeIdError, safe_relpath
from raylib.voc import VocAnnotation, VocObject, write_voc

log = logging.getLogger(__name__)

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


def _image_sizes(manifest_uri: str, selected: set[str]) -> dict[str, tuple[int, int, str]]:
    """{image_id: (width, height, uri)} for the selected images; sizes from the manifest or the header."""
    wanted = pa.array(sorted(selected), pa.string())
    sizes = {}
    for batch in pool.iter_manifest(manifest_uri):
        for row in batch.filter(pc.is_in(batch.column("image_id"), value_set=wanted)).to_pylist():
            sizes[row["image_id"]] = (row["width"], row["height"], row["uri"])
    for image_id, (width, height, uri) in list(sizes.items()):
        if not width or not height:
            try:
                width, height = images.header_size(storage.read_bytes(uri), image_id)
            except (images.ImageError, OSError) as exc:
                log.warning("pre-annotation of %s without image size: %s", image_id, exc)
                width, height = 0, 0
            sizes[image_id] = (width, height, uri)
    return sizes


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


def export_preannotations(selection_uri: str, detections_uri: str, manifest_uri: str, class_names: list[str],
                          out_dir: str, round_idx: int) -> int:
    """Write `<out_dir>/<image_id>.xml` per selected image, `<out_dir>/preannotations_coco.json` and
    `<out_dir>/preannotations_labelstudio.json`.

    Each XML holds every kept detection of its image (the detections Parquet streamed, filtered to
    the selected ids), most confident first. Returns the number of XML files written; ids refused by
    `safe_relpath` are skipped and listed with the reason in `<out_dir>/skipped.json`."""
    _start_export(out_dir)
    selected = set(storage.read_table(selection_uri, columns=["image_id"]).column("image_id").to_pylist())
    detections = _selected_detections(detections_uri, selected)
    detections["score"] = detections["cls_conf"] * detections["loc_conf"]
    sizes = _image_sizes(manifest_uri, selected)
    analysis_time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    written, skipped, coco_images = 0, {}, []
    for image_id in sorted(selected):
        try:
            relpath = safe_relpath(image_id)
        except UnsafeIdError as exc:
            skipped[image_id] = str(exc)
            continue
        width, height, uri = sizes.get(image_id, (0, 0, ""))
        rows = by_image.get(image_id, pd.DataFrame(columns=detections.columns))
        objects = [
            VocObject(name=class_names[int(r.class_id)], x1=float(r.x1), y1=float(r.y1), x2=float(r.x2),
                      y2=float(r.y2), confidence=float(min(max(r.score, 0.0), 1.0)))
            for r in rows.sort_values("score", ascending=False).itertuples(index=False)
            # as written (two decimals): a box that rounds to a line would be refused by VOC readers
            if round(r.x2, 2) > round(r.x1, 2) and round(r.y2, 2) > round(r.y1, 2)
        ]
        annotation = VocAnnotation(filename=(uri or relpath).rsplit("/", 1)[-1], width=int(width or 0),
                                   height=int(height or 0), objects=objects)
        storage.write_bytes(storage.join(out_dir, relpath + ".xml"), write_voc(annotation, analysis_time))
        coco_images.append({"image_id": image_id, "file_name": relpath, "width": int(width or 0),
                            "height": int(height or 0), "uri": uri or relpath})
        written += 1
    exported = {image["image_id"] for image in coco_images}
    coco_dets = detections[detections["image_id"].isin(exported)]
    document = coco.detections_to_coco(coco_images, coco_dets, class_names)
    document["info"] = {"description": f"raylib pre-annotations, round {round_idx}", "date_created": analysis_time}
    storage.write_text(storage.join(out_dir, "preannotations_coco.json"), json.dumps(document))
    tasks = labelstudio.detections_to_tasks(coco_images, coco_dets, class_names, f"raylib round {round_idx}")
    storage.write_text(storage.join(out_dir, "preannotations_labelstudio.json"), json.dumps(tasks))
    if skipped:
        log.warning("round %d: %d selected image id(s) refused for export: %s", round_idx, len(skipped),
                    list(skipped)[:3])
        storage.write_text(storage.join(out_dir, "skipped.json"), json.dumps(skipped, indent=1))
    return written
