"""COCO JSON import/export for labels and pre-annotations.

COCO ids are integers: images are numbered 1..N in table order; category ids are `class_id + 1`
(COCO's ids start at 1), matched back by name on import. Boxes are COCO's `[x, y, width, height]` in
pixel-edge coordinates, as ours (no rounding). VOC's `difficult` travels as an extra `difficult` key.

`file_name` is the image's file as viewers and annotation tools look it up (`file_name`): the
image id with the extension of the image's URI, e.g. `2007_000017.jpg` for a VOC pool (id
`2007_000017`, `.../JPEGImages/2007_000017.jpg`) and `street/cam1/0001.jpg` for a folder pool (the id is
already the relative path). On import, `file_name`s are mapped back to image ids by `coco_to_labels`'s
`image_ids` (see `raylib.formats.deliveries.name_index`, which also accepts bare base names).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as json_string

import numpy as np
import pyarrow as pa

from raylib import paths, schemas
from raylib.formats import voc



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


# ------------------------------------------------------------------------------------------ import
# Deliveries are typed or converted by people and tools: every value is checked for its JSON type, and
# a bad one costs its image (an error naming the field), never the file or a silently different label.

MAX_OBJECTS = voc.MAX_OBJECTS  # per image, as for VOC files


def short(value: object) -> str:
    """`value` for an error message: lists, objects and huge integers by kind (their repr may be huge,
    too deep to print, or over Python's 4300-digit limit), the rest as repr cut at 40 characters."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def number(value: object, what: str) -> float:
    """A JSON number as a finite float; strings, booleans, lists and huge integers are errors."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {short(value)}, not a number")
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{what} is {short(value)}, not a finite number") from None
    if not math.isfinite(result):
        raise ValueError(f"{what} is {short(value)}, not a finite number")
    return result


def flag(value: object, what: str) -> bool:
    """A yes/no field (`difficult`, `iscrowd`): absent/null is no; true/false, 0/1 and the strings
    of voc.FLAG_STRINGS ('0'/'1'/'true'/'false') as they say ("0" is not true); anything else is an error, not a guess."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in voc.FLAG_STRINGS:
        return voc.FLAG_STRINGS[value.strip().lower()]
    raise ValueError(f"{what} is {short(value)}; expected 0 or 1")


def image_size(width: object, height: object, what: str) -> tuple[int, int] | None:
    """A delivery's image size: None when both are absent, else positive whole numbers up to
    voc.MAX_SIDE (ValueError otherwise)."""
    if width is None and height is None:
        return None
    w, h = number(width, f"{what} width"), number(height, f"{what} height")
    if not (1 <= w <= voc.MAX_SIDE and 1 <= h <= voc.MAX_SIDE) or w != int(w) or h != int(h):
        raise ValueError(f"{what} size {w:g}x{h:g} is not a whole number of pixels in 1..{voc.MAX_SIDE}")
    return int(w), int(h)


def checked_box(x1: float, y1: float, x2: float, y2: float, size: tuple[int, int] | None, what: str
                ) -> tuple[float, ...]:
    """A box in pixel edges inside its image (voc.inside_image: clipped by at most 1 px, else an
    error). Without a known size only the bound every image has, voc.MAX_SIDE, is checked."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise ValueError(f"{what} is empty, negative or not finite")
    try:
        return voc.inside_image(x1, y1, x2, y2, *(size or (voc.MAX_SIDE, voc.MAX_SIDE)))
    except ValueError as exc:
        if size is None:
            raise ValueError(f"{what} lies beyond {voc.MAX_SIDE} px, outside any image") from None
        raise ValueError(f"{what} {exc}") from None


def _object(ann: dict, class_of_category: dict, size: tuple[int, int] | None, what: str) -> dict:
    category = ann.get("category_id")
    if not _is_id(category) or category not in class_of_category:
        raise ValueError(f"{what}: category_id {short(category)} is not among the categories of configured classes")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"{what}: bbox is {short(bbox)}; it must be a list of 4 numbers [x, y, width, height]")
    x, y, w, h = (number(v, f"{what}: bbox[{i}]") for i, v in enumerate(bbox))
    if w <= 0 or h <= 0:
        raise ValueError(f"{what}: bbox {[x, y, w, h]} is empty or negative")
    x1, y1, x2, y2 = checked_box(x, y, x + w, y + h, size, f"{what}: bbox {[x, y, w, h]}")
    difficult = flag(ann.get("difficult"), f"{what}: difficult") or flag(ann.get("iscrowd"), f"{what}: iscrowd")
    return {"class_id": class_of_category[category], "x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "difficult": difficult}


def _is_id(value: object) -> bool:
    """COCO ids are integers; strings are accepted too (some converters write them). Floats, booleans,
    lists are not ids (1.0 would silently equal 1)."""
    return isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)


def _class_of_category(coco: dict, class_names: list[str]) -> dict:
    """COCO category id -> class_id, by name. A category id listed twice refuses the file: which class
    its boxes have can't be known (the last one used to win: a car stored as a person)."""
    class_ids = {name: i for i, name in enumerate(class_names)}
    names: dict = {}
    for category in coco["categories"]:
        if not isinstance(category, dict) or not _is_id(category.get("id")):
            continue  # unusable; boxes pointing at it are errors for their images
        category_id, name = category["id"], category.get("name")
        if category_id in names:
            raise ValueError(f"category id {short(category_id)} is listed twice ({short(names[category_id])} and "
                             f"{short(name)}); its boxes can't be given a class. Fix 'categories'")
        names[category_id] = name
    return {category_id: class_ids[name] for category_id, name in names.items()
            if isinstance(name, str) and name in class_ids}


def coco_to_labels(coco: dict, class_names: list[str], image_ids: Mapping[str, str] | None = None,
                   sizes: Mapping[str, tuple[int, int]] | None = None) -> tuple[pa.Table, list[tuple[str, str]]]:
    """A COCO dataset dict -> (`image_id`/`objects` table, [(image_id, error)]).

    `image_id` is the image's `file_name`, or with `image_ids` (file_name -> image_id) the id it maps
    to; images whose file_name is not in `image_ids` are left out (not part of this round) and are not
    errors. An image listed without annotations is a labelled empty image. Categories are matched to
    `class_names` by name. Boxes must lie inside their image, whose size is `sizes[image_id]` (read
    from the image's header) when given, else the delivery's width/height.

    Errors for one image: a bad annotation (unknown category, bbox not 4 finite numbers, box outside
    the image, a difficult/iscrowd that is not 0/1), an unsafe file name, an id shared with another
    image, more than MAX_OBJECTS boxes. Annotations that point at no image are reported under
    `<annotation N>`. Raises ValueError, refusing the file, when it is not a COCO dataset (no
    `images`, `annotations` or `categories` list) or a category id is listed twice.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key) if isinstance(coco, dict) else None, list):
            raise ValueError(f"not a COCO dataset: no '{key}' list (an export without boxes still has "
                             f"'annotations': [])")
    class_of_category = _class_of_category(coco, class_names)
    errors: list[tuple[str, str]] = []
    failed: set[str] = set()
    owners, others, size_of = _our_images(coco["images"], image_ids, sizes or {}, errors, failed)
    objects = _our_objects(coco["annotations"], owners, others, size_of, class_of_category, errors, failed)
    kept = [image_id for image_id in objects if image_id not in failed]
    table = pa.table(
        {"image_id": pa.array(kept, pa.string()),
         "objects": pa.array([objects[k] for k in kept], pa.list_(schemas.OBJECT))},
        schema=schemas.LABEL_FIELDS,
    )
    return table, errors


def _our_images(images: list, image_ids: Mapping[str, str] | None, sizes: Mapping[str, tuple[int, int]],
                errors: list[tuple[str, str]], failed: set[str]) -> tuple[dict, set, dict]:
    """`coco_to_labels`'s images: (COCO id -> our image ids, COCO ids of images not ours, our image id ->
    its size); the problems of an image go to `errors` and its id to `failed`."""
    owners: dict = {}  # COCO image id -> [our image ids]
    others: set = set()  # COCO ids of images not ours (other rounds): their annotations are skipped
    size_of: dict[str, tuple[int, int] | None] = {}
    for n, image in enumerate(images):
        if not isinstance(image, dict):
            errors.append((f"<image #{n}>", f"COCO image #{n} is {short(image)}, not an object"))
            continue
        name, coco_id = image.get("file_name"), image.get("id")
        try:
            ours = paths.safe_relpath(name) if image_ids is None else (
                image_ids.get(name) if isinstance(name, str) else None)
        except paths.UnsafeIdError as exc:
            errors.append((short(name) if not isinstance(name, str) else name, f"COCO image: {exc}"))
            continue
        if ours is None:
            if _is_id(coco_id):
                others.add(coco_id)
            continue
        what = f"COCO image '{name}'"
        try:
            if not _is_id(coco_id):
                raise ValueError(f"{what}: id is {short(coco_id)}, not an integer")
            if ours in size_of:
                raise ValueError(f"{what} is listed twice in 'images'")
            size_of[ours] = sizes.get(ours) or image_size(image.get("width"), image.get("height"), what)
        except ValueError as exc:
            errors.append((ours, str(exc)))
            failed.add(ours)
            size_of.setdefault(ours, None)
            continue
        owners.setdefault(coco_id, []).append(ours)
    for coco_id, ours in owners.items():
        if len(ours) > 1 or coco_id in others:
            # Annotations point at images by id: with one id for two images, whose boxes are whose is unknown.
            for image_id in ours:
                errors.append((image_id, f"COCO image '{image_id}': duplicate image id {short(coco_id)} (shared by "
                                         f"{len(ours) + (coco_id in others)} images in 'images'); its boxes can't "
                                         "be told apart"))
                failed.add(image_id)
    return owners, others, size_of


def _our_objects(annotations: list, owners: dict, others: set, size_of: dict, class_of_category: dict,
                 errors: list[tuple[str, str]], failed: set[str]) -> dict[str, list[dict]]:
    """`coco_to_labels`'s annotations: our image id -> its OBJECT dicts."""
    objects: dict[str, list[dict]] = {image_id: [] for ours in owners.values() for image_id in ours}
    for n, ann in enumerate(annotations):
        ann_id = short(ann.get("id")) if isinstance(ann, dict) else f"#{n}"
        image_key = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_key):
            errors.append((f"<annotation {ann_id}>", f"COCO annotation {ann_id} has image_id {short(image_key)}, "
                                                     "not an image id"))
            continue
        if image_key not in owners:
            if image_key not in others:
                errors.append((f"<annotation {ann_id}>", f"COCO annotation {ann_id} points at image id "
                                                         f"{short(image_key)}, which is not in 'images'"))
            continue
        image_id = owners[image_key][0]
        if image_id in failed:
            continue
        what = f"COCO annotation {ann_id} of image '{image_id}'"
        try:
            objects[image_id].append(_object(ann, class_of_category, size_of[image_id], what))
            if len(objects[image_id]) > MAX_OBJECTS:
                raise ValueError(f"COCO image '{image_id}' has more than {MAX_OBJECTS} boxes, the limit per image")
        except ValueError as exc:
            errors.append((image_id, str(exc)))
            failed.add(image_id)
    return objects


# Pre-annotations (the one COCO writer): a COCO document whose annotations carry `score`, as JSON text written
# part by part and joined by a byte copy (raylib/export.py): the head, each part's images and annotations, the tail.
IMAGES_TO_ANNOTATIONS, TAIL = b'], "annotations": [', b"]}"


def preannotation_head(class_names: list[str], info: dict) -> bytes:
    return (json.dumps({"info": info, "categories": categories(class_names)})[:-1] + ', "images": [').encode()


def preannotation_images(first_id: int, file_names: list[str], widths: np.ndarray, heights: np.ndarray) -> bytes:
    """Comma-separated COCO images numbered from `first_id`."""
    return ",".join(f'{{"id": {first_id + n}, "file_name": {json_string(name)}, "width": {w}, "height": {h}}}'
                    for n, (name, w, h) in enumerate(zip(file_names, widths.tolist(), heights.tolist()))).encode()


def preannotation_annotations(first_id: int, image_ids: np.ndarray, class_id: np.ndarray, boxes: np.ndarray,
                              score: np.ndarray) -> bytes:
    """Comma-separated COCO annotations numbered from `first_id`: image_ids are the COCO image ids,
    boxes (n, 4) float64 pixel-edge x1, y1, x2, y2, score float64 (floats as `json.dumps` writes them)."""
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    area = (sides[:, 0] * sides[:, 1]).tolist()
    return ",".join(
        f'{{"id": {first_id + n}, "image_id": {image}, "category_id": {category + 1}, '
        f'"bbox": [{x!r}, {y!r}, {w!r}, {h!r}], "area": {a!r}, "iscrowd": 0, "score": {s!r}}}'
        for n, (image, category, (x, y), (w, h), a, s) in enumerate(zip(
            image_ids.tolist(), class_id.tolist(), boxes[:, :2].tolist(), sides.tolist(), area, score.tolist()))
    ).encode()
