"""Label Studio: pre-annotations as tasks with predictions, the labelling config for our classes, and
the annotators' JSON export read back into the labels table.

Tasks follow Label Studio's documented import format (https://labelstud.io/guide/tasks): a list of
`{"data": {...}, "predictions": [{"model_version", "score", "result": [...]}]}`, each result a
`rectanglelabels` region whose `value` holds x, y, width, height in percent of the image, with
`from_name`/`to_name` naming the tags of `label_config` (`label` on `image`).

`data.image` must be a URL Label Studio can serve:
- `s3://bucket/key` as is: add the bucket as the project's S3 cloud storage (source storage, with
  "Treat every bucket object as a source file" off) and Label Studio presigns the URLs;
- a local file as `/data/local-files/?d=<path relative to LOCAL_FILES_DOCUMENT_ROOT>`: start Label
  Studio with `LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and
  `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document_root>`, and add a "Local files" storage whose
  absolute path is the image folder (under the document root). With no document root given we use
  `/`, so `d` is the absolute path without its leading slash.
`data.image_id` carries our id, so the export maps back without guessing from URLs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Collection
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pandas as pd
import pyarrow as pa

from raylib import schemas, storage

FROM_NAME, TO_NAME = "label", "image"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
LABEL_FIELDS = pa.schema([schemas.LABELS.field("image_id"), schemas.LABELS.field("objects")])


def image_url(uri: str, document_root: str | None = None) -> str:
    """The URL Label Studio serves `uri` at: s3:// (and http(s)://) URIs unchanged, local files in the
    local-files form relative to `document_root` (default `/`). Raises ValueError for a local file
    outside the document root: Label Studio refuses to serve it."""
    if storage.is_s3(uri) or uri.startswith(("http://", "https://", "gs://", "azure-blob://")):
        return uri
    path = os.path.abspath(uri)
    root = os.path.abspath(document_root or "/")
    relative = os.path.relpath(path, root)
    if relative == os.curdir or relative.startswith(os.pardir):
        raise ValueError(f"image '{uri}' is not under the Label Studio document root '{root}'; set "
                         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (and the export's document root) to a folder above it")
    return LOCAL_FILES_PREFIX + quote(relative.replace(os.sep, "/"), safe="/")


def label_config(class_names: list[str]) -> str:
    """The labelling config (`label_config.xml`) matching our tasks: boxes named `label` on `image`."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in class_names)
    return (f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </RectangleLabels>\n</View>\n')


def detections_to_tasks(images: list[dict], detections: pd.DataFrame, class_names: list[str],
                        model_version: str, document_root: str | None = None) -> list[dict]:
    """One task per image (dicts with image_id, uri, width, height) with one prediction holding its
    detections (columns image_id, class_id, score, x1, y1, x2, y2), most confident first. An image
    without a known size gets no boxes: percentages need the size."""
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    tasks = []
    for image in images:
        width, height = int(image["width"] or 0), int(image["height"] or 0)
        rows = by_image.get(image["image_id"])
        results = []
        if rows is not None and width > 0 and height > 0:
            for n, row in enumerate(rows.sort_values("score", ascending=False).itertuples(index=False)):
                results.append({
                    "id": f"{n}", "type": "rectanglelabels", "from_name": FROM_NAME, "to_name": TO_NAME,
                    "original_width": width, "original_height": height, "image_rotation": 0,
                    "score": float(row.score),
                    "value": {"x": 100.0 * row.x1 / width, "y": 100.0 * row.y1 / height,
                              "width": 100.0 * (row.x2 - row.x1) / width, "height": 100.0 * (row.y2 - row.y1) / height,
                              "rotation": 0, "rectanglelabels": [class_names[int(row.class_id)]]},
                })
        scores = [r["score"] for r in results]
        tasks.append({
            "data": {TO_NAME: image_url(image["uri"], document_root), "image_id": image["image_id"]},
            # The task's score is its least confident box: Label Studio can sort the queue by it.
            "predictions": [{"model_version": model_version, "score": min(scores) if scores else 0.0,
                             "result": results}],
        })
    return tasks


# ------------------------------------------------------------------------------------------ import


def _task_image_id(task: dict, image_ids: dict[str, str] | None) -> str | None:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    if isinstance(data.get("image_id"), str):
        return data["image_id"]
    if image_ids is None:
        return None
    url = data.get(TO_NAME)
    if not isinstance(url, str):
        return None
    if url.startswith(LOCAL_FILES_PREFIX):
        url = url[len(LOCAL_FILES_PREFIX):]
    for name in (url, url.split("?", 1)[0].rsplit("/", 1)[-1]):
        if name in image_ids:
            return image_ids[name]
    return None


def _final_annotation(task: dict) -> dict | None:
    """The annotation that counts: the latest one not cancelled ('skipped'); None if there is none."""
    done = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    return max(enumerate(done), key=lambda pair: (str(pair[1].get("updated_at") or ""), pair[0]))[1]


def _region(result: dict, class_ids: dict[str, int], size: tuple[int, int] | None, what: str) -> dict | None:
    """One rectanglelabels region -> an OBJECT dict in pixels; None for other result types."""
    if result.get("type") != "rectanglelabels":
        return None
    value = result.get("value") or {}
    names = value.get("rectanglelabels") or []
    if len(names) != 1 or names[0] not in class_ids:
        raise ValueError(f"{what}: label {names!r} is not one of the configured classes")
    if float(value.get("rotation") or 0.0) != 0.0:
        raise ValueError(f"{what}: rotated box ({value.get('rotation')} degrees); boxes must be axis-aligned")
    width = result.get("original_width") or (size[0] if size else 0)
    height = result.get("original_height") or (size[1] if size else 0)
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        width, height = float(width), float(height)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{what}: x, y, width, height must be numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"{what}: box {[x, y, w, h]} (percent) is empty, negative or not finite")
    if width <= 0 or height <= 0:
        raise ValueError(f"{what}: the image size is unknown (no original_width/original_height)")
    x1, y1 = max(x, 0.0) * width / 100.0, max(y, 0.0) * height / 100.0
    x2, y2 = min(x + w, 100.0) * width / 100.0, min(y + h, 100.0) * height / 100.0
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{what}: box {[x, y, w, h]} (percent) lies outside the image")
    return {"class_id": class_ids[names[0]], "x1": x1, "y1": y1, "x2": x2, "y2": y2, "difficult": False}


def tasks_to_labels(tasks: list, class_names: list[str], selected: Collection[str],
                    image_ids: dict[str, str] | None = None, sizes: dict[str, tuple[int, int]] | None = None
                    ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Label Studio's JSON export (a list of tasks with `annotations`) -> (`image_id`/`objects` table,
    [(image_id, error)]), for the `selected` image ids only.

    A task's image id is its `data.image_id` (our tasks carry it), else its `data.image` URL looked up
    in `image_ids` (file name or base name -> image id). The latest annotation not cancelled counts;
    one with no regions is a labelled empty image; a task with no such annotation is not labelled yet
    (left out, not an error). Percentages become pixels with the region's original size, else `sizes`.
    A region with an unknown label, a rotation or a bad box is an error for its image."""
    class_ids = {name: i for i, name in enumerate(class_names)}
    wanted = set(selected)
    rows: dict[str, list[dict]] = {}
    errors: list[tuple[str, str]] = []
    failed: set[str] = set()
    for index, task in enumerate(tasks if isinstance(tasks, list) else []):
        if not isinstance(task, dict):
            continue
        image_id = _task_image_id(task, image_ids)
        if image_id not in wanted or image_id in failed:
            continue
        annotation = _final_annotation(task)
        if annotation is None:
            continue
        what = f"Label Studio task {task.get('id', index)} ('{image_id}')"
        try:
            objects = []
            for n, result in enumerate(annotation.get("result") or []):
                region = _region(result, class_ids, (sizes or {}).get(image_id), f"{what}, region {n}")
                if region is not None:
                    objects.append(region)
        except (ValueError, AttributeError) as exc:
            errors.append((image_id, str(exc)))
            failed.add(image_id)  # a later task for the same image does not hide the problem
            rows.pop(image_id, None)
            continue
        rows[image_id] = objects
    table = pa.table({"image_id": pa.array(list(rows), pa.string()),
                      "objects": pa.array(list(rows.values()), pa.list_(schemas.OBJECT))}, schema=LABEL_FIELDS)
    return table, errors


