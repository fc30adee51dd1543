"""COCO JSON import/export for labels and pre-annotations.

COCO ids are integers: images are numbered 1..N in table order; category ids are `class_id + 1`
(COCO's ids start at 1), matched back by name on import. Boxes are COCO's `[x, y, width, height]` in
pixel-edge coordinates, as ours (no rounding). VOC's `difficult` travels as an extra `difficult` key.

`file_name` is the image's file as viewers and annotation tools look it up (`file_name`): the
image id with the extension of the image's URI, e.g. `2007_000017.jpg` for a VOC pool (id
`2007_000017`, `.../JPEGImages/2007_000017.jpg`) and `street/cam1/0001.jpg` for a folder pool (the id is
already the relative path). On import, `file_name`s are mapped back to image ids by `coco_to_labels`'s
`image_ids` (see `raylib.annotations.name_index`, which also accepts bare base names).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import pyarrow as pa

from raylib import paths, schemas

LABEL_FIELDS = pa.schema([schemas.LABELS.field("image_id"), schemas.LABELS.field("objects")])


def file_name(image_id: str, uri: str | None) -> str:
    """The file name an image is known by outside raylib: `image_id` plus its URI's extension when
    the id has none (VOC ids), else the id itself (folder pools: the relative path)."""
    base = (uri or "").rstrip("/").rsplit("/", 1)[-1]
    ext = base[base.rfind("."):] if "." in base else ""
    if not ext or image_id.lower().endswith(ext.lower()):
        return image_id
    return image_id + ext


def categories(class_names: list[str]) -> list[dict]:
    return [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]


def _bbox(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def _image(index: int, image_id: str, size: tuple[int, int] | None) -> dict:
    image = {"id": index + 1, "file_name": image_id}
    if size is not None:
        image["width"], image["height"] = int(size[0]), int(size[1])
    return image


def labels_to_coco(
    labels: pa.Table, class_names: list[str], sizes: dict[str, tuple[int, int]] | None = None
) -> dict:
    """Labels (`image_id`, `objects`) -> a COCO dataset dict. `sizes` maps image_id -> (width, height);
    images without a size are written without width/height."""
    sizes = sizes or {}
    images, annotations = [], []
    rows = labels.select(["image_id", "objects"]).to_pylist()
    for index, row in enumerate(rows):
        images.append(_image(index, row["image_id"], sizes.get(row["image_id"])))
        for obj in row["objects"] or []:
            bbox = _bbox(obj["x1"], obj["y1"], obj["x2"], obj["y2"])
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(obj["class_id"]) + 1,
                 "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "difficult": int(bool(obj["difficult"]))}
            )
    return {"images": images, "annotations": annotations, "categories": categories(class_names)}


def _object(ann: dict, class_of_category: dict, what: str) -> dict:
    category = ann.get("category_id")
    if category not in class_of_category:
        raise ValueError(f"{what}: category_id {category!r} is not among the categories of configured classes")
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{what}: bbox must be [x, y, width, height] numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"{what}: bbox {[x, y, w, h]} is empty, negative or not finite")
    difficult = bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0))
    return {"class_id": class_of_category[category], "x1": x, "y1": y, "x2": x + w, "y2": y + h,
            "difficult": difficult}


def coco_to_labels(coco: dict, class_names: list[str], image_ids: Mapping[str, str] | None = None
                   ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """A COCO dataset dict -> (`image_id`/`objects` table, [(image_id, error)]).

    `image_id` is the image's `file_name`, or with `image_ids` (file_name -> image_id) the id it maps
    to; images whose file_name is not in `image_ids` are left out (not part of this round) and are not
    errors. An image listed without annotations is a labelled empty image. Categories are matched to
    `class_names` by name. An image with a bad annotation (unknown category, bad box) or an unsafe
    file name is an error for that image; annotations that point at no image are reported under
    `<annotation N>`.
    """
    class_ids = {name: i for i, name in enumerate(class_names)}
    class_of_category = {c["id"]: class_ids[c["name"]] for c in coco.get("categories", []) if c.get("name") in class_ids}
    errors: list[tuple[str, str]] = []
    file_names: dict = {}
    ignored: set = set()
    for image in coco.get("images", []):
        if image_ids is not None:
            name = image.get("file_name")
            if isinstance(name, str) and name in image_ids:
                file_names[image.get("id")] = image_ids[name]
            else:
                ignored.add(image.get("id"))
            continue
        try:
            file_names[image["id"]] = paths.safe_relpath(image.get("file_name"))
        except (KeyError, paths.UnsafeIdError) as exc:
            errors.append((str(image.get("file_name", image.get("id"))), f"COCO image: {exc}"))
    objects: dict = {image_key: [] for image_key in file_names}
    failed: set = set()
    for ann in coco.get("annotations", []):
        image_key = ann.get("image_id")
        if image_key in ignored:
            continue
        if image_key not in file_names:
            message = f"COCO annotation {ann.get('id')} points at image id {image_key!r}, which is not in 'images'"
            errors.append((f"<annotation {ann.get('id')}>", message))
            continue
        what = f"COCO annotation {ann.get('id')} of image '{file_names[image_key]}'"
        try:
            objects[image_key].append(_object(ann, class_of_category, what))
        except ValueError as exc:
            if image_key not in failed:
                errors.append((file_names[image_key], str(exc)))
            failed.add(image_key)
    kept = [key for key in file_names if key not in failed]
    table = pa.table(
        {"image_id": pa.array([file_names[k] for k in kept], pa.string()),
         "objects": pa.array([objects[k] for k in kept], pa.list_(schemas.OBJECT))},
        schema=LABEL_FIELDS,
    )
    return table, errors


def detections_to_coco(images: list[dict], detections: pd.DataFrame, class_names: list[str]) -> dict:
    """Pre-annotations as a COCO dict: `images` are dicts with image_id, file_name, width, height;
    `detections` has columns image_id, class_id, score, x1, y1, x2, y2. Each annotation carries `score`."""
    index_of = {image["image_id"]: i + 1 for i, image in enumerate(images)}
    coco_images = [
        {"id": index_of[im["image_id"]], "file_name": im["file_name"], "width": int(im["width"]),
         "height": int(im["height"])}
        for im in images
    ]
    unknown = sorted(set(detections["image_id"]) - set(index_of))
    if unknown:
        raise ValueError(f"detections reference {len(unknown)} image(s) not in `images`, e.g. {unknown[:3]}")
    bad_class = detections[(detections["class_id"] < 0) | (detections["class_id"] >= len(class_names))]
    if len(bad_class):
        raise ValueError(f"detections have class_id {int(bad_class['class_id'].iloc[0])} outside "
                         f"0..{len(class_names) - 1}")
    annotations = []
    for row in detections.itertuples(index=False):
        bbox = _bbox(row.x1, row.y1, row.x2, row.y2)
        annotations.append(
            {"id": len(annotations) + 1, "image_id": index_of[row.image_id], "category_id": int(row.class_id) + 1,
             "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "score": float(row.score)}
        )
    return {"images": coco_images, "annotations": annotations, "categories": categories(class_names)}
