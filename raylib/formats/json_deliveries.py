"""The JSON deliveries (raylib/formats/deliveries.py has the rules every delivery follows): COCO datasets
and Label Studio exports, every *.json under the delivery folder, one Ray task a file, the images' sizes read
from their headers for the box checks, the same image in two files reconciled."""
from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import schemas, storage
from raylib.formats import coco, labelstudio
from raylib.formats.deliveries import (READ_THREADS, SELECTED_FIELDS, SIZE_FIELDS, Delivery, _as_mapping, _chunks, _finish,
                                       _in_tasks, _selected_table, name_index, read_json)

# What reading one delivery file can raise on any content: explicit, so a bug elsewhere still shows.
FILE_ERRORS = (ValueError, OSError, TypeError, AttributeError, KeyError, OverflowError, RecursionError)
JSON_FORMATS = {"coco": "COCO", "labelstudio": "Label Studio"}


def _header_sizes_chunk(selected: pa.Table) -> pa.Table:
    """(image_id, width, height) from the headers of the selected images that can be read (threads on
    S3): boxes are checked against the image itself, whatever size the delivery states (or omits)."""
    from raylib import images  # torch comes with it: only when there is a JSON delivery to check

    ids, uris = selected.column("image_id").to_pylist(), selected.column("uri").to_pylist()

    def one(index: int) -> tuple[int, int] | None:
        try:
            return images.header_size_of(uris[index], ids[index]) if uris[index] else None
        except (images.ImageError, OSError, ValueError):
            return None  # unreadable here: the delivery's size is used

    with ThreadPoolExecutor(max_workers=READ_THREADS) as executor:
        on_s3 = any(storage.is_s3(uri or "") for uri in uris)
        sizes = list(executor.map(one, range(len(ids))) if on_s3 else map(one, range(len(ids))))
    kept = [index for index, size in enumerate(sizes) if size is not None]
    return pa.table({"image_id": selected.column("image_id").take(pa.array(kept, pa.int64())),
                     "width": pa.array([sizes[i][0] for i in kept], pa.int64()),
                     "height": pa.array([sizes[i][1] for i in kept], pa.int64())}, schema=SIZE_FIELDS)


def _known_sizes(selected: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(sizes the selection carries (scoring read them from the headers), the selected images without)."""
    if "width" not in selected.column_names:
        return SIZE_FIELDS.empty_table(), selected
    known = pc.and_(pc.is_valid(selected.column("width")), pc.is_valid(selected.column("height")))
    return (selected.filter(known).select(SIZE_FIELDS.names).cast(SIZE_FIELDS),
            selected.filter(pc.invert(known)).select(SELECTED_FIELDS.names))


def _sizes_table(sizes: Mapping[str, tuple[int, int]]) -> pa.Table:
    ids = sorted(sizes)
    return pa.table({"image_id": pa.array(ids, pa.string()), "width": pa.array([sizes[i][0] for i in ids], pa.int64()),
                     "height": pa.array([sizes[i][1] for i in ids], pa.int64())}, schema=SIZE_FIELDS)


def parse_json_file(uri: str, labels_format: str, class_names: list[str], selected: pa.Table, sizes: pa.Table,
                    document_root: str | None) -> tuple[pa.Table, list[tuple[str, str]], str | None]:
    """One COCO or Label Studio file of a delivery -> (image_id, objects) of the selected images in it,
    (image_id, reason) for its unusable ones, and the reason the file itself can't be read (None when it
    can). Run in a Ray task per file by `import_json_files`, or in its process."""
    what = JSON_FORMATS[labels_format]
    mapping = _as_mapping(selected)
    size_of = dict(zip(sizes.column("image_id").to_pylist(),
                       zip(sizes.column("width").to_pylist(), sizes.column("height").to_pylist())))
    try:
        document = read_json(uri)
        if labels_format == "coco":
            table, errors = coco.coco_to_labels(document, class_names, image_ids=name_index(mapping), sizes=size_of)
        elif isinstance(document, list):
            table, errors = labelstudio.tasks_to_labels(document, class_names, mapping, size_of, document_root)
        else:
            raise ValueError("not a Label Studio JSON export (a list of tasks)")
    except FILE_ERRORS as exc:
        return schemas.LABEL_FIELDS.empty_table(), [], f"{what} file '{uri}' could not be read: {exc}"
    return table, [(image_id, f"{reason} (in '{uri}')") for image_id, reason in errors], None


def import_json_files(labels_in: str, labels_format: str, selected: Mapping[str, str | None] | pa.Table,
                       class_names: list[str], sizes: Mapping[str, tuple[int, int]] | None,
                       document_root: str | None = None) -> Delivery:
    """Every *.json under `labels_in` through `parse_json_file`, one Ray task a file (`_in_tasks`); a file
    that can't be parsed is an error naming it (the others are still read); the same image delivered
    twice with different labels is an error for that image. `sizes` None: the sizes `selected` carries
    (width and height columns: scoring read them from the headers), else read from the images' headers,
    TASK_CHUNK images a task.

    Each file is parsed whole: no streaming JSON parser is installed, and the files are capped at
    MAX_JSON_BYTES (~8x that in memory). A delivery larger than that comes as several files (per-part
    exports). Only Arrow tables come back to this process."""
    what = JSON_FORMATS[labels_format]
    table = _selected_table(selected)
    files = storage.list_files(labels_in, ".json")
    if sizes is not None:
        size_table = _sizes_table(sizes)
    elif files:
        size_table, unknown = _known_sizes(table)
        parts = list(_in_tasks(_header_sizes_chunk, [(chunk,) for chunk in _chunks(unknown)], unknown.num_rows))
        size_table = pa.concat_tables([size_table, *parts])
    else:
        size_table = SIZE_FIELDS.empty_table()
    table = table.select(list(SELECTED_FIELDS.names))
    results = _in_tasks(parse_json_file, [(uri,) for uri in files], table.num_rows,
                        labels_format, class_names, table, size_table, document_root)
    parts, errors, failed = [], [], set()
    for index, (uri, (part, image_errors, file_error)) in enumerate(zip(files, results)):
        if file_error:
            errors.append((f"<{uri}>", file_error))
            continue
        errors += image_errors
        failed.update(image_id for image_id, _ in image_errors)
        parts.append(part.append_column("file", pa.array(np.full(part.num_rows, index, np.int32))))
    labels = pa.concat_tables(parts) if parts else schemas.LABEL_FIELDS.append(pa.field("file", pa.int32())).empty_table()
    errors += _conflicts(labels, files, what, failed)
    labels = labels.filter(pc.invert(pc.is_in(labels.column("image_id"), pa.array(sorted(failed), pa.string()))))
    labels = labels.take(pc.sort_indices(labels, [("image_id", "ascending"), ("file", "ascending")]))
    if labels.num_rows > 1:  # an image delivered in several files with the same labels: once
        ids = labels.column("image_id").combine_chunks()
        labels = labels.filter(pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))]))
    answered = pa.concat_arrays([labels.column("image_id").combine_chunks(), pa.array(sorted(failed), pa.string())])
    missing = table.column("image_id").filter(pc.invert(pc.is_in(table.column("image_id"), value_set=answered)))
    return _finish(labels_in, selected, labels.drop_columns(["file"]).combine_chunks(), errors, missing.to_pylist())


def _conflicts(labels: pa.Table, files: list[str], what: str, failed: set[str]) -> list[tuple[str, str]]:
    """Errors for the images delivered in several rows with different labels (added to `failed`); only
    the repeated images' rows become Python objects."""
    counts = pc.value_counts(labels.column("image_id"))
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if not len(repeated):
        return []
    rows = labels.filter(pc.is_in(labels.column("image_id"), value_set=repeated))
    rows = rows.take(pc.sort_indices(rows, [("file", "ascending")])).to_pylist()  # stable: file order, then row order
    errors, last = [], {}
    for row in rows:
        image_id = row["image_id"]
        if image_id in last and last[image_id]["objects"] != row["objects"]:
            errors.append((image_id, f"{what}: '{image_id}' is delivered twice with different labels, in "
                                     f"'{files[last[image_id]['file']]}' and '{files[row['file']]}'; keep one"))
            failed.add(image_id)
        last[image_id] = row
    return errors


def import_coco(labels_in: str, selected: Mapping[str, str | None] | pa.Table, class_names: list[str],
                sizes: Mapping[str, tuple[int, int]] | None = None) -> Delivery:
    """Every *.json under `labels_in` as a COCO dataset; an image listed without annotations is empty.
    `sizes`: image_id -> (width, height) when known (default: read from each selected image's header)."""
    return import_json_files(labels_in, "coco", selected, class_names, sizes)


def import_labelstudio(labels_in: str, selected: Mapping[str, str | None] | pa.Table, class_names: list[str],
                       document_root: str | None = None, sizes: Mapping[str, tuple[int, int]] | None = None
                       ) -> Delivery:
    """Every *.json under `labels_in` as a Label Studio JSON export; an annotation with no regions is
    an empty image, a task without a (non-skipped) annotation is missing. `document_root`: Label
    Studio's LOCAL_FILES_DOCUMENT_ROOT (`loop.labelstudio_document_root`), for local-files URLs;
    `sizes` as for `import_coco`."""
    return import_json_files(labels_in, "labelstudio", selected, class_names, sizes, document_root)
