"""What annotators deliver for a round -> the labels table, and whether the delivery is complete.

One importer per `labels_format`, each reading the delivery folder/prefix `labels_in` for the
round's selected images only:

    voc          <labels_in>/Annotations/<image_id>.xml, or <image_id without its extension>.xml
                 (CVAT's "PASCAL VOC 1.1" export unzipped there; Label Studio's VOC export; any VOC tool)
    coco         every *.json under <labels_in> is a COCO dataset (CVAT's or Label Studio's COCO export);
                 images are matched by file_name (`coco.file_name`, or the bare base name)
    labelstudio  every *.json under <labels_in> is a Label Studio JSON export (list of tasks);
                 images are matched by data.image_id (our tasks carry it), else by the image URL

and in every format <labels_in>/reviewed_empty.txt: image ids (or file names), one a line, that an
annotator reviewed and found empty. Tools whose exports drop images without boxes (Label Studio's VOC
export does) lose the "no object here" answer otherwise, and the image would be selected again.

Each selected image ends up in exactly one of: `labels` (usable, possibly with no objects),
`errors` (delivered but unusable: the reason names the file and the problem; never fatal) or
`missing` (nothing delivered yet). A delivery is complete when the annotators say so
(`delivery_marker`), or when every selected image is labelled; `check_delivery` says which and how
many images are still missing. Images left out of a committed round stay in the pool.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from raylib import coco, labelstudio, schemas, storage, voc

FORMATS = ("voc", "coco", "labelstudio")
REVIEWED_EMPTY_FILE = "reviewed_empty.txt"  # in <labels_in>/
MAX_JSON_BYTES = 1024 * 1024 * 1024  # a delivery file this big is not an annotation export
READ_THREADS = 16
LABEL_FIELDS = pa.schema([schemas.LABELS.field("image_id"), schemas.LABELS.field("objects")])


def delivery_marker(labels_in: str, round_idx: int) -> str:
    """The file annotators create when round `round_idx`'s delivery is final (any content)."""
    return storage.join(labels_in, "_complete", f"round={round_idx:02d}")


@dataclass
class Delivery:
    labels: pa.Table  # image_id, objects: selected images with usable labels
    errors: list[tuple[str, str]] = field(default_factory=list)  # (image_id or '<file>', reason)
    missing: list[str] = field(default_factory=list)  # selected image ids with nothing delivered


# ----------------------------------------------------------------------------------- name matching


def name_index(selected: Mapping[str, str | None]) -> dict[str, str]:
    """Names an annotation tool may give a selected image -> its image_id: the id, its file name
    (`coco.file_name`: id + the URI's extension), the file name without extension (CVAT's item) and
    the bare base names of those when no two selected images share them."""
    index: dict[str, str] = {}
    shared: dict[str, set[str]] = {}
    for image_id, uri in selected.items():
        name = coco.file_name(image_id, uri)
        for exact in (image_id, name):
            index[exact] = image_id
        stem = name[: name.rfind(".")] if "." in name.rsplit("/", 1)[-1] else name
        for loose in {stem, posixpath.basename(name), posixpath.basename(stem)}:
            shared.setdefault(loose, set()).add(image_id)
    for loose, ids in shared.items():
        if len(ids) == 1 and loose not in index:
            index[loose] = next(iter(ids))
    return index


# --------------------------------------------------------------------------------------- importers


def _class_ids(class_names: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names)}


def import_voc(labels_in: str, selected: Mapping[str, str | None], class_names: list[str]) -> Delivery:
    """`<labels_in>/Annotations/<image_id>.xml` (or `<item>.xml`, the file name without extension)."""
    root = storage.join(labels_in, "Annotations")
    base = storage.resolve(root)[1].rstrip("/") + "/"
    # Relative path -> URI of the files delivered: only listed files are opened (no path built from an id).
    present = {uri[uri.index(base) + len(base):]: uri for uri in storage.list_files(root, ".xml") if base in uri}
    class_ids = _class_ids(class_names)

    def one(image_id: str) -> tuple[str, list[dict] | None, str | None]:
        name = coco.file_name(image_id, selected[image_id])
        candidates = [image_id, name[: name.rfind(".")] if "." in name.rsplit("/", 1)[-1] else name]
        for candidate in candidates:
            uri = present.get(candidate + ".xml")
            if uri is not None:
                try:
                    return image_id, voc.label_objects(uri, class_ids), None
                except voc.VocError as exc:
                    return image_id, None, str(exc)
        return image_id, None, None

    rows, errors, missing = {}, [], []
    threads = READ_THREADS if storage.is_s3(labels_in) else 1
    with ThreadPoolExecutor(max_workers=threads) as executor:
        for image_id, objects, error in executor.map(one, sorted(selected)):
            if error is not None:
                errors.append((image_id, error))
            elif objects is None:
                missing.append(image_id)
            else:
                rows[image_id] = objects
    return _finish(labels_in, selected, rows, errors, missing)


def _read_json(uri: str) -> object:
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as stream:
        data = stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"'{uri}' is larger than {MAX_JSON_BYTES} bytes; not an annotation export")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{uri}' is not valid JSON: {exc}") from None


def _import_json_files(labels_in: str, selected: Mapping[str, str | None], what: str,
                       parse: Callable[[object], tuple[pa.Table, list[tuple[str, str]]]]) -> Delivery:
    """Every *.json under `labels_in` through `parse`; the same image delivered twice with different
    labels is an error for that image."""
    rows: dict[str, list[dict]] = {}
    errors: list[tuple[str, str]] = []
    failed: set[str] = set()
    source: dict[str, str] = {}
    for uri in storage.list_files(labels_in, ".json"):
        try:
            table, file_errors = parse(_read_json(uri))
        except (ValueError, OSError, TypeError, AttributeError, KeyError) as exc:
            errors.append((f"<{uri}>", f"{what} file '{uri}' could not be read: {exc}"))
            continue
        for image_id, reason in file_errors:
            errors.append((image_id, f"{reason} (in '{uri}')"))
            failed.add(image_id)
        for row in table.to_pylist():
            image_id = row["image_id"]
            if image_id in rows and rows[image_id] != row["objects"]:
                errors.append((image_id, f"{what}: '{image_id}' is delivered twice with different labels, in "
                                         f"'{source[image_id]}' and '{uri}'; keep one"))
                failed.add(image_id)
            rows[image_id], source[image_id] = row["objects"], uri
    rows = {image_id: objects for image_id, objects in rows.items() if image_id not in failed}
    missing = [i for i in sorted(selected) if i not in rows and i not in failed]
    return _finish(labels_in, selected, rows, errors, missing)


def import_coco(labels_in: str, selected: Mapping[str, str | None], class_names: list[str]) -> Delivery:
    """Every *.json under `labels_in` as a COCO dataset; an image listed without annotations is empty."""
    names = name_index(selected)

    def parse(document: object) -> tuple[pa.Table, list[tuple[str, str]]]:
        if not isinstance(document, dict) or not isinstance(document.get("images"), list):
            raise ValueError("not a COCO dataset (no 'images' list)")
        return coco.coco_to_labels(document, class_names, image_ids=names)

    return _import_json_files(labels_in, selected, "COCO", parse)


def import_labelstudio(labels_in: str, selected: Mapping[str, str | None], class_names: list[str],
                       sizes: Mapping[str, tuple[int, int]] | None = None) -> Delivery:
    """Every *.json under `labels_in` as a Label Studio JSON export; an annotation with no regions is
    an empty image, a task without a (non-skipped) annotation is missing."""
    names = name_index(selected)

    def parse(document: object) -> tuple[pa.Table, list[tuple[str, str]]]:
        if not isinstance(document, list):
            raise ValueError("not a Label Studio JSON export (a list of tasks)")
        return labelstudio.tasks_to_labels(document, class_names, selected, names, dict(sizes or {}))

    return _import_json_files(labels_in, selected, "Label Studio", parse)


IMPORTERS: dict[str, Callable[[str, Mapping[str, str | None], list[str]], Delivery]] = {
    "voc": import_voc, "coco": import_coco, "labelstudio": import_labelstudio,
}


def import_delivery(labels_format: str, labels_in: str, selected: Mapping[str, str | None],
                    class_names: list[str]) -> Delivery:
    """The delivery in `labels_in` for the `selected` images (image_id -> uri) in `labels_format`."""
    if labels_format not in IMPORTERS:
        raise ValueError(f"loop.labels_format '{labels_format}' is not one of {', '.join(FORMATS)}")
    return IMPORTERS[labels_format](labels_in, selected, class_names)


# ----------------------------------------------------------------------------------- reviewed empty


def reviewed_empty(labels_in: str, selected: Mapping[str, str | None]) -> tuple[set[str], list[str]]:
    """(selected image ids listed in `<labels_in>/reviewed_empty.txt`, lines naming no selected image).
    Lines are image ids or file names; blank lines and `#` comments are skipped."""
    uri = storage.join(labels_in, REVIEWED_EMPTY_FILE)
    if not storage.exists(uri):
        return set(), []
    names = name_index(selected)
    found, unknown = set(), []
    for line in storage.read_text(uri).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line in names:
            found.add(names[line])
        else:
            unknown.append(line)
    return found, unknown


def _finish(labels_in: str, selected: Mapping[str, str | None], rows: dict[str, list[dict]],
            errors: list[tuple[str, str]], missing: list[str]) -> Delivery:
    """Apply reviewed_empty.txt and build the Delivery (labels in selection order)."""
    empty, _ = reviewed_empty(labels_in, selected)
    errored = {image_id for image_id, _ in errors}
    for image_id in sorted(empty):
        if rows.get(image_id):
            errors.append((image_id, f"'{image_id}' is listed in {REVIEWED_EMPTY_FILE} but delivered with "
                                     f"{len(rows[image_id])} box(es); remove one of the two"))
            del rows[image_id]
        elif image_id not in errored:
            rows[image_id] = []
    missing = [image_id for image_id in missing if image_id not in rows]
    ids = [image_id for image_id in sorted(selected) if image_id in rows]
    table = pa.table({"image_id": pa.array(ids, pa.string()),
                      "objects": pa.array([rows[i] for i in ids], pa.list_(schemas.OBJECT))}, schema=LABEL_FIELDS)
    return Delivery(table, errors, missing)


# -------------------------------------------------------------------------------------- completeness


@dataclass
class DeliveryStatus:
    complete: bool  # commit the round now
    marked: bool  # the annotators' marker exists
    n_selected: int
    n_labelled: int
    n_invalid: int  # delivered but unusable (reasons in Delivery.errors)
    n_missing: int  # nothing delivered yet
    message: str


def check_delivery(delivery: Delivery, labels_in: str, round_idx: int, n_selected: int,
                   accept_partial: bool = False) -> DeliveryStatus:
    """Is round `round_idx`'s delivery complete? Yes when the annotators created `delivery_marker`,
    when every selected image is labelled, or when `accept_partial` says to take what is there; the
    images not labelled then stay in the pool. Otherwise the message says how many are missing."""
    marker = delivery_marker(labels_in, round_idx)
    marked = storage.exists(marker)
    n_labelled, n_missing = delivery.labels.num_rows, len(delivery.missing)
    n_invalid = n_selected - n_labelled - n_missing  # each selected image is in exactly one of the three
    everything = n_labelled == n_selected
    complete = marked or everything or accept_partial
    counts = (f"{n_labelled} of {n_selected} selected images labelled, {n_missing} missing, "
              f"{n_invalid} delivered but invalid")
    if everything:
        message = f"round {round_idx}: delivery complete: {counts}"
    elif marked:
        message = f"round {round_idx}: delivery marked complete ('{marker}'): {counts}; the rest stays in the pool"
    elif accept_partial:
        message = f"round {round_idx}: partial delivery accepted: {counts}; the rest stays in the pool"
    else:
        message = (f"round {round_idx}: waiting for labels: {counts}. Deliver the rest under '{labels_in}', "
                   f"or create '{marker}' to commit what is there (the rest stays in the pool)")
    return DeliveryStatus(complete, marked, n_selected, n_labelled, n_invalid, n_missing, message)
