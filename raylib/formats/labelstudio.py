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

import os
from collections.abc import Collection, Mapping
from json.encoder import encode_basestring_ascii as json_string
from urllib.parse import parse_qs, quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa

from raylib import schemas, storage
from raylib.formats.coco import MAX_OBJECTS, checked_box, flag, image_size, number, short

FROM_NAME, TO_NAME = "label", "image"
LOCAL_FILES_PREFIX = "/data/local-files/?d="


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


_REGION = ('{"id": "%d", "type": "rectanglelabels", "from_name": "' + FROM_NAME + '", "to_name": "' + TO_NAME
           + '", "original_width": %d, "original_height": %d, "image_rotation": 0, "score": %r, "value": '
           '{"x": %r, "y": %r, "width": %r, "height": %r, "rotation": 0, "rectanglelabels": [%s]}}')


def preannotation_tasks(keep: list[int], urls: list[str], image_ids: list[str], widths: np.ndarray,
                        heights: np.ndarray, bounds: np.ndarray, class_id: np.ndarray, boxes: np.ndarray,
                        score: np.ndarray, class_names: list[str], model_version: str) -> bytes:
    """The Label Studio tasks of many images (the one writer of our tasks), as comma-separated JSON text:
    one task per image i in `keep` with one prediction holding its detections. An image without a known
    size (0) gets no boxes: percentages need the size. A task for each image i in `keep` (its URL in `urls`, from `image_url`), whose boxes are rows
    bounds[i]:bounds[i + 1] of class_id, boxes ((n, 4) float64 pixel-edge) and score (float64), most
    confident first."""
    per_box = np.repeat(np.arange(len(image_ids)), np.diff(bounds))
    box_width, box_height = widths[per_box], heights[per_box]
    with np.errstate(divide="ignore", invalid="ignore"):  # unknown sizes: no boxes, below
        percent = np.stack([100.0 * boxes[:, 0] / box_width, 100.0 * boxes[:, 1] / box_height,
                            100.0 * (boxes[:, 2] - boxes[:, 0]) / box_width,
                            100.0 * (boxes[:, 3] - boxes[:, 1]) / box_height], axis=1).tolist()
    rank = (np.arange(len(per_box)) - bounds[:-1][per_box]).tolist()
    names = [json_string(name) for name in class_names]
    scores, edges, version = score.tolist(), bounds.tolist(), json_string(model_version)
    regions = [_REGION % (n, w, h, s, *value, names[c]) for n, w, h, s, value, c in zip(
        rank, box_width.tolist(), box_height.tolist(), scores, percent, class_id.tolist())]
    sizes = list(zip(widths.tolist(), heights.tolist()))
    tasks = []
    for i, url in zip(keep, urls):
        width, height = sizes[i]
        start, end = (edges[i], edges[i + 1]) if width > 0 and height > 0 else (0, 0)
        # The task's score is its least confident box: Label Studio can sort the queue by it.
        lowest = scores[end - 1] if end > start else 0.0
        tasks.append(f'{{"data": {{"{TO_NAME}": {json_string(url)}, "image_id": {json_string(image_ids[i])}}}, '
                     f'"predictions": [{{"model_version": {version}, "score": {lowest!r}, '
                     f'"result": [{", ".join(regions[start:end])}]}}]}}')
    return ",".join(tasks).encode()


# ------------------------------------------------------------------------------------------ import


def local_path(url: str) -> str | None:
    """The `d` path of a `/data/local-files/?d=<path>` URL (unquoted), else None."""
    if not url.startswith(LOCAL_FILES_PREFIX.split("?", 1)[0] + "?"):
        return None
    values = parse_qs(url.split("?", 1)[1]).get("d")
    return values[0].lstrip("/") if values else None


def _same_image(url: str, uri: str, document_root: str | None) -> bool:
    """Is Label Studio's `data.image` URL the image at `uri`? Remote URIs (s3://, https://) must be
    equal, bucket or host included. A local-files URL's `d` is a path under the document root: with
    `document_root` it must be exactly `uri`; without, `uri` must end with that whole path."""
    local = local_path(url)
    if local is None:
        return url == uri
    if "://" in uri or not local:
        return False
    if document_root is not None:
        return os.path.abspath(os.path.join(document_root, local)) == os.path.abspath(uri)
    return ("/" + os.path.abspath(uri).lstrip("/")).endswith("/" + local)


class _UrlIndex:
    """Selected images by the URL Label Studio shows them at: equal remote URIs, or local-files paths
    matched as `_same_image` does (a path two selected images end with matches neither)."""

    def __init__(self, uris: Mapping[str, str | None], document_root: str | None):
        self.remote = {uri: image_id for image_id, uri in uris.items() if uri and "://" in uri}
        self.local = {image_id: uri for image_id, uri in uris.items() if uri and "://" not in uri}
        self.document_root = document_root
        self.tails: dict[str, set[str]] = {}
        for image_id, uri in self.local.items():
            parts = os.path.abspath(uri).lstrip("/").split("/")
            for start in range(len(parts)):
                self.tails.setdefault("/".join(parts[start:]), set()).add(image_id)

    def find(self, url: str) -> str | None:
        local = local_path(url)
        if local is None:
            return self.remote.get(url)
        ids = self.tails.get(local, set())
        matches = [i for i in ids if _same_image(url, self.local[i], self.document_root)]
        return matches[0] if len(matches) == 1 else None


def _task_image_id(task: dict, wanted: Collection[str], uris: Mapping[str, str | None],
                   index: _UrlIndex) -> str | None:
    """The selected image a task is for, or None (another round's, project's, bucket's image). Our
    tasks carry `data.image_id`; the task's `data.image` must then be that image's URL too (a task
    of another bucket or host with the same id raises ValueError). Without an id, the URL decides:
    never a bare base name, which images in other buckets and hosts share."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"'data' is {short(data)}, not an object")
    url, claimed = data.get(TO_NAME), data.get("image_id")
    if url is not None and not isinstance(url, str):
        raise ValueError(f"data.{TO_NAME} is {short(url)}, not a URL")
    if claimed is None:
        return index.find(url) if url is not None else None
    if not isinstance(claimed, str):
        raise ValueError(f"data.image_id is {short(claimed)}, not a string")
    if claimed not in wanted:
        return None
    uri = uris.get(claimed)
    if url is not None and uri and not _same_image(url, uri, index.document_root):
        raise _WrongImage(claimed, f"data.{TO_NAME} '{url[:200]}' is not where image '{claimed}' is ('{uri}'): "
                                   "a task of another bucket, host or folder? Deliver the task of our image")
    return claimed


class _WrongImage(ValueError):
    def __init__(self, image_id: str, message: str):
        super().__init__(message)
        self.image_id = image_id


def _final_annotation(task: dict, what: str) -> dict | None:
    """The annotation that counts: the latest one not cancelled ('skipped'); None if there is none."""
    annotations = task.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, list):
        raise ValueError(f"{what}: 'annotations' is {short(annotations)}, not a list")
    done = []
    for n, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ValueError(f"{what}: annotation #{n} is {short(annotation)}, not an object")
        if not flag(annotation.get("was_cancelled"), f"{what}: annotation #{n} was_cancelled"):
            done.append(annotation)
    if not done:
        return None
    return max(enumerate(done), key=lambda pair: (str(pair[1].get("updated_at") or ""), pair[0]))[1]


def _region(result: object, class_ids: dict[str, int], size: tuple[int, int] | None, what: str) -> dict | None:
    """One rectanglelabels region -> an OBJECT dict in pixels; None for other result types. The image
    size is `size` (from the image's header) when known, else the region's original_width/height."""
    if not isinstance(result, dict):
        raise ValueError(f"{what} is {short(result)}, not an object")
    if result.get("type") != "rectanglelabels":
        return None
    value = result.get("value")
    if not isinstance(value, dict):
        raise ValueError(f"{what}: 'value' is {short(value)}, not an object")
    names = value.get("rectanglelabels")
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str) or names[0] not in class_ids:
        raise ValueError(f"{what}: label {short(names)} is not one of the configured classes")
    if number(value.get("rotation") or 0, f"{what}: rotation") != 0.0:
        raise ValueError(f"{what}: rotated box ({short(value.get('rotation'))} degrees); boxes must be axis-aligned")
    x, y, w, h = (number(value.get(k), f"{what}: {k}") for k in ("x", "y", "width", "height"))
    if w <= 0 or h <= 0:
        raise ValueError(f"{what}: box {[x, y, w, h]} (percent) is empty or negative")
    if size is None:
        size = image_size(result.get("original_width"), result.get("original_height"), f"{what}: original")
    if size is None:
        raise ValueError(f"{what}: the image size is unknown (no original_width/original_height)")
    width, height = size
    x1, y1, x2, y2 = checked_box(x * width / 100.0, y * height / 100.0, (x + w) * width / 100.0,
                                 (y + h) * height / 100.0, size, f"{what}: box {[x, y, w, h]} (percent)")
    return {"class_id": class_ids[names[0]], "x1": x1, "y1": y1, "x2": x2, "y2": y2, "difficult": False}


# What a task typed or converted by hand can raise while read: costs that task's image only.
TASK_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)


def tasks_to_labels(tasks: list, class_names: list[str], selected: Mapping[str, str | None] | Collection[str],
                    sizes: Mapping[str, tuple[int, int]] | None = None, document_root: str | None = None
                    ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Label Studio's JSON export (a list of tasks with `annotations`) -> (`image_id`/`objects` table,
    [(image_id, error)]), for the `selected` image ids only (image_id -> URI, or just the ids).

    A task's image is its `data.image_id` (our tasks carry it; its `data.image` must then be that
    image's URL), else the selected image whose URI is its `data.image` URL (`_same_image`: bucket,
    host or local path included; `document_root` is Label Studio's LOCAL_FILES_DOCUMENT_ROOT). The
    latest annotation not cancelled counts; one with no regions is a labelled empty image; a task with
    no such annotation is not labelled yet (left out, not an error). Percentages become pixels with
    the image's size from `sizes` (its header), else the region's original size.
    A malformed task or region (an unknown label, a rotation, a bad or outside box, more than
    MAX_OBJECTS boxes) is an error for its image only, as is the same image labelled differently by
    two tasks; a task whose image can't be told is reported under `<task N>`."""
    class_ids = {name: i for i, name in enumerate(class_names)}
    uris = selected if isinstance(selected, Mapping) else {}
    wanted = set(selected)
    index = _UrlIndex(uris, document_root)
    rows: dict[str, list[dict]] = {}
    errors: list[tuple[str, str]] = []
    failed: set[str] = set()
    for n, task in enumerate(tasks):
        task_id = short(task.get("id", n)) if isinstance(task, dict) else f"#{n}"
        image_id = None
        try:
            if not isinstance(task, dict):
                raise ValueError(f"{short(task)}, not an object")
            image_id = _task_image_id(task, wanted, uris, index)
            if image_id is None or image_id in failed:
                continue
            what = f"Label Studio task {task_id} ('{image_id}')"
            annotation = _final_annotation(task, what)
            if annotation is None:
                continue
            result = annotation.get("result")
            if result is not None and not isinstance(result, list):
                raise ValueError(f"{what}: 'result' is {short(result)}, not a list")
            objects = []
            for k, region in enumerate(result or []):
                obj = _region(region, class_ids, (sizes or {}).get(image_id), f"{what}, region {k}")
                if obj is not None:
                    objects.append(obj)
                if len(objects) > MAX_OBJECTS:
                    raise ValueError(f"{what} has more than {MAX_OBJECTS} boxes, the limit per image")
            if image_id in rows and rows[image_id] != objects:
                raise ValueError(f"{what}: image '{image_id}' is labelled differently by two tasks; keep one")
        except TASK_ERRORS as exc:
            image_id = exc.image_id if isinstance(exc, _WrongImage) else image_id
            if image_id is None:
                errors.append((f"<task {task_id}>", f"Label Studio task {task_id}: {exc}"))
                continue
            if image_id not in failed:
                errors.append((image_id, str(exc) if str(exc).startswith("Label Studio") else
                               f"Label Studio task {task_id} ('{image_id}'): {exc}"))
            failed.add(image_id)  # a later task for the same image does not hide the problem
            rows.pop(image_id, None)
            continue
        rows[image_id] = objects
    table = pa.table({"image_id": pa.array(list(rows), pa.string()),
                      "objects": pa.array(list(rows.values()), pa.list_(schemas.OBJECT))}, schema=schemas.LABEL_FIELDS)
    return table, errors
