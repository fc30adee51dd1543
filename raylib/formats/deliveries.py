"""What annotators deliver for a round -> the labels table, and whether the delivery is complete.

One importer per `labels_format`, each reading the delivery folder/prefix `labels_in` for the
round's selected images only:

    voc          <labels_in>/Annotations/<image_id>.xml, or <image_id without its extension>.xml
                 (CVAT's "PASCAL VOC 1.1" export unzipped there; Label Studio's VOC export; any VOC tool)
    coco         every *.json under <labels_in> is a COCO dataset (CVAT's or Label Studio's COCO export);
                 images are matched by file_name (`coco.file_name`, or the bare base name)
    labelstudio  every *.json under <labels_in> is a Label Studio JSON export (list of tasks);
                 images are matched by data.image_id (our tasks carry it; the image URL must agree),
                 else by the image URL: the same s3:// or https:// URI, or the local-files path

and in every format <labels_in>/reviewed_empty.txt: image ids (or file names), one a line, that an
annotator reviewed and found empty. Tools whose exports drop images without boxes (Label Studio's VOC
export does) lose the "no object here" answer otherwise, and the image would be selected again.

Each selected image ends up in exactly one of: `labels` (usable, possibly with no objects),
`errors` (delivered but unusable: the reason names the file and the problem; never fatal) or
`missing` (nothing delivered yet). A bad value costs its image, never the file or the stage: boxes
must be finite and inside the image (clipped by at most 1 px), yes/no fields 0/1 (a string "0" is
no), ids unique; image sizes come from the image's header when known. A file is refused whole, with
an error naming it, only when it can't be read as its format at all. A delivery is complete when the annotators say so
(`delivery_marker`), or when every selected image is labelled; `check_delivery` says which and how
many images are still missing. Images left out of a committed round stay in the pool.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from raylib import runtime, schemas, storage
from raylib.config import LABEL_FORMATS
from raylib.formats import coco, cvat, voc

REVIEWED_EMPTY_FILE = "reviewed_empty.txt"  # in <labels_in>/
# A delivery file is parsed whole (no streaming JSON parser here), at about 8x its size in memory:
# a round's export is a few MB, and a whole Label Studio project of 1M boxes ~ 200 MB.
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_TEXT_BYTES = 16 * 1024 * 1024  # reviewed_empty.txt: a million image ids
READ_THREADS = 16
SELECTED_FIELDS = pa.schema([pa.field("image_id", pa.string()), pa.field("uri", pa.string())])
SIZE_FIELDS = pa.schema([pa.field("image_id", pa.string()), pa.field("width", pa.int64()), pa.field("height", pa.int64())])
# Per-image work of an import runs in Ray tasks of TASK_CHUNK images (VOC files parsed, image headers
# read for the JSON formats' size checks; a JSON delivery: one task per file) when Ray is running and
# the round has at least TASK_MIN_IMAGES: a few seconds of worker start against ~1 ms an image.
TASK_CHUNK = 5_000
TASK_MIN_IMAGES = 20_000



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
        stem = cvat.item(name)
        for loose in {stem, posixpath.basename(name), posixpath.basename(stem)}:
            shared.setdefault(loose, set()).add(image_id)
    for loose, ids in shared.items():
        if len(ids) == 1 and loose not in index:
            index[loose] = next(iter(ids))
    return index


# --------------------------------------------------------------------------------------- importers


def _class_ids(class_names: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names)}


def _selected_table(selected: Mapping[str, str | None] | pa.Table) -> pa.Table:
    """The selection as an (image_id, uri) table sorted by image_id, each id once; with the width and
    height columns of a table that has them."""
    if isinstance(selected, pa.Table):
        sized = "width" in selected.column_names and "height" in selected.column_names
        fields = [*SELECTED_FIELDS, *SIZE_FIELDS.remove(0)] if sized else list(SELECTED_FIELDS)
        table = selected.select([f.name for f in fields]).cast(pa.schema(fields))
        table = table.take(pc.sort_indices(table, [("image_id", "ascending")]))
        if table.num_rows > 1:  # drop repeated ids (kept: the first of each run)
            ids = table.column("image_id").combine_chunks()
            table = table.filter(pa.concat_arrays([pa.array([True]),
                                                   pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))]))
        return table
    ids = sorted(selected)
    return pa.table({"image_id": pa.array(ids, pa.string()), "uri": pa.array([selected[i] for i in ids], pa.string())},
                    schema=SELECTED_FIELDS)


def _as_mapping(selected: Mapping[str, str | None] | pa.Table) -> Mapping[str, str | None]:
    if isinstance(selected, pa.Table):
        return dict(zip(selected.column("image_id").to_pylist(), selected.column("uri").to_pylist()))
    return selected


def _voc_candidates(image_ids: list[str], uris: list[str | None]) -> tuple[list[str], list[str]]:
    """The two names a selected image's VOC file may have: `<image_id>.xml`, and `<item>.xml` with the
    item the file name without its extension (CVAT's)."""
    by_id, by_item = [], []
    for image_id, uri in zip(image_ids, uris):
        name = coco.file_name(image_id, uri)
        by_id.append(image_id + ".xml")
        by_item.append(cvat.item(name) + ".xml")
    return by_id, by_item


def parse_voc_chunk(image_ids: pa.Array, xml_uris: pa.Array, class_names: list[str]
                    ) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Parse the VOC files `xml_uris` of `image_ids` into an (image_id, objects) table, built column by
    column (no per-object dict is kept past its file), and (image_id, reason) for the unusable ones.
    Run in a Ray task per chunk by `import_voc`, or in its process."""
    class_ids = _class_ids(class_names)
    uris = xml_uris.to_pylist()

    def one(index: int) -> list[dict] | str:
        try:
            return voc.label_objects(uris[index], class_ids)
        except voc.VocError as exc:
            return str(exc)

    kept, offsets, errors = [], [0], []
    columns: dict[str, list] = {name: [] for name in schemas.OBJECT.names}
    ids = image_ids.to_pylist()
    with ThreadPoolExecutor(max_workers=READ_THREADS) as executor:
        # Threads for S3's latency; local files are read in this thread (a pool's hand-off costs more).
        results = executor.map(one, range(len(uris))) if uris and storage.is_s3(uris[0]) else map(one, range(len(uris)))
        for index, result in enumerate(results):
            if isinstance(result, str):
                errors.append((ids[index], result))
                continue
            kept.append(index)
            for obj in result:
                for name, values in columns.items():
                    values.append(obj[name])
            offsets.append(offsets[-1] + len(result))
    objects = pa.StructArray.from_arrays([pa.array(columns[f.name], f.type) for f in schemas.OBJECT],
                                         fields=list(schemas.OBJECT))
    table = pa.table({"image_id": image_ids.take(pa.array(kept, pa.int64())).cast(pa.string()),
                      "objects": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), objects,
                                                          type=pa.list_(schemas.OBJECT))}, schema=schemas.LABEL_FIELDS)
    return table, errors


def import_voc(labels_in: str, selected: Mapping[str, str | None] | pa.Table, class_names: list[str]) -> Delivery:
    """`<labels_in>/Annotations/<image_id>.xml` (or `<item>.xml`, the file name without extension).

    `selected`: image_id -> uri, or an (image_id, uri) table (the oracle's: no Python dict of a large
    selection). The delivery is listed once; only listed files are opened (no path is built from an
    id). The files are parsed TASK_CHUNK at a time (`parse_voc_chunk`, by `_in_tasks`: parsing is ~1 ms
    a file of GIL-bound Python); the chunks' Arrow tables are merged in selection order."""
    root = storage.join(labels_in, "Annotations")
    prefix = ("s3://" if storage.is_s3(labels_in) else "") + storage.resolve(root)[1].rstrip("/") + "/"
    # Relative paths of the files delivered, streamed into Arrow (no Python object per file delivered).
    listed = _string_array(storage.iter_files(root, ".xml"))
    table = _selected_table(selected)
    by_id, by_item = [], []
    for start in range(0, table.num_rows, TASK_CHUNK):
        chunk = table.slice(start, TASK_CHUNK)
        names = _voc_candidates(chunk.column("image_id").to_pylist(), chunk.column("uri").to_pylist())
        by_id.append(pa.array(names[0], pa.string()))
        by_item.append(pa.array(names[1], pa.string()))
    by_id = pa.chunked_array(by_id, pa.string())
    by_item = pa.chunked_array(by_item, pa.string())
    # One hash of the listing for all selected images (is_in over the whole chunked column).
    found = pc.if_else(pc.is_in(by_id, value_set=listed), by_id,
                       pc.if_else(pc.is_in(by_item, value_set=listed), by_item, pa.scalar(None, pa.string())))
    delivered = pc.is_valid(found)
    missing = table.column("image_id").filter(pc.invert(delivered)).to_pylist()
    ids = table.column("image_id").filter(delivered).combine_chunks()
    xml_uris = pc.binary_join_element_wise(prefix, found.filter(delivered), "").combine_chunks()
    results = _in_tasks(parse_voc_chunk, list(zip(_chunks(ids), _chunks(xml_uris))), len(ids), class_names)
    tables, errors = [], []
    for chunk_table, chunk_errors in results:
        tables.append(chunk_table)
        errors += chunk_errors
    labels = pa.concat_tables(tables) if tables else schemas.LABEL_FIELDS.empty_table()
    return _finish(labels_in, selected, labels, errors, missing)


def _string_array(strings: Iterable[str], chunk: int = 65_536) -> pa.Array:
    """`strings` as one Arrow array, built `chunk` at a time: a million names never sit in a Python list."""
    chunks, pending = [], []
    for value in strings:
        pending.append(value)
        if len(pending) == chunk:
            chunks.append(pa.array(pending, pa.string()))
            pending = []
    chunks.append(pa.array(pending, pa.string()))
    return pa.concat_arrays(chunks)


def _chunks(values: pa.Array | pa.Table) -> list[pa.Array | pa.Table]:
    """`values` in TASK_CHUNK pieces, each a compact copy: a slice pickles its parent's whole buffers, so
    each task's arguments were the whole selection (VOC at 10^6 files: ~15 GB through the object store,
    spilled, 7.9 GiB of driver RSS)."""
    concat = pa.concat_tables if isinstance(values, pa.Table) else pa.concat_arrays
    return [concat([values.slice(start, TASK_CHUNK)]) for start in range(0, len(values), TASK_CHUNK)]


def _in_tasks(fn: Callable, calls: list[tuple], n_images: int, *shared: object) -> Iterator:
    """`fn(*args, *shared)` for every call: a Ray task of 1 CPU each from TASK_MIN_IMAGES images."""
    return runtime.in_tasks(fn, calls, num_cpus=1, big_enough=n_images >= TASK_MIN_IMAGES, shared=shared)


def _read_capped(uri: str, max_bytes: int, what: str) -> bytes:
    """At most `max_bytes` + 1 bytes: a bigger file is refused without being loaded whole."""
    data = storage.read_bytes(uri, max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"'{uri}' is larger than {max_bytes // 2**20} MiB; not {what}. Split it")
    return data


def read_json(uri: str) -> object:
    """A JSON annotation file, refused above MAX_JSON_BYTES or when nested too deeply (ValueError)."""
    data = _read_capped(uri, MAX_JSON_BYTES, "an annotation export")
    try:
        return json.loads(data)
    except RecursionError:  # json's C parser recurses once per nesting level
        raise ValueError(f"'{uri}' is nested too deeply to be an annotation export") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"'{uri}' is not valid JSON: {exc}") from None


def import_delivery(labels_format: str, labels_in: str, selected: Mapping[str, str | None] | pa.Table,
                    class_names: list[str], document_root: str | None = None) -> Delivery:
    """The delivery in `labels_in` for the `selected` images (image_id -> uri, or an (image_id, uri)
    table) in `labels_format`;
    `document_root` is Label Studio's (local-files URLs)."""
    if labels_format not in LABEL_FORMATS:
        raise ValueError(f"loop.labels_format '{labels_format}' is not one of {', '.join(LABEL_FORMATS)}")
    if labels_format == "voc":
        return import_voc(labels_in, selected, class_names)
    from raylib.formats import json_deliveries  # it builds on this module's helpers

    return json_deliveries.import_json_files(labels_in, labels_format, selected, class_names, None, document_root)


# ----------------------------------------------------------------------------------- reviewed empty


def reviewed_empty(labels_in: str, selected: Mapping[str, str | None] | pa.Table
                   ) -> tuple[set[str], list[str], list[str]]:
    """(selected image ids listed in `<labels_in>/reviewed_empty.txt`, lines naming no selected image,
    errors). Lines are image ids or file names in UTF-8; blank lines and `#` comments are skipped. A
    line that is not UTF-8 (a file saved as cp1252) is skipped and named in the errors, the others
    count; a file that can't be read at all is one error."""
    uri = storage.join(labels_in, REVIEWED_EMPTY_FILE)
    if not storage.exists(uri):
        return set(), [], []
    try:
        data = _read_capped(uri, MAX_TEXT_BYTES, "a list of image ids")
    except (ValueError, OSError) as exc:
        return set(), [], [f"{REVIEWED_EMPTY_FILE} could not be read: {exc}"]
    names = name_index(_as_mapping(selected))
    found, unknown, bad = set(), [], []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            bad.append(number)
            continue
        if not line or line.startswith("#"):
            continue
        if line in names:
            found.add(names[line])
        else:
            unknown.append(line)
    errors = [f"line(s) {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''} of '{uri}' are not UTF-8 "
              "text and were not read; save the file as UTF-8"] if bad else []
    return found, unknown, errors


def _finish(labels_in: str, selected: Mapping[str, str | None] | pa.Table, labels: pa.Table,
            errors: list[tuple[str, str]], missing: list[str]) -> Delivery:
    """Apply reviewed_empty.txt to the delivered `labels` (image_id, objects; in selection order) and
    build the Delivery (labels in selection order)."""
    empty, _, problems = reviewed_empty(labels_in, selected)
    errors.extend((f"<{storage.join(labels_in, REVIEWED_EMPTY_FILE)}>", problem) for problem in problems)
    if not empty:
        return Delivery(labels, errors, missing)
    errored = {image_id for image_id, _ in errors}
    ids = labels.column("image_id")
    listed = pc.is_in(ids, value_set=pa.array(sorted(empty), pa.string()))
    n_boxes = pc.list_value_length(labels.column("objects"))
    conflict = pc.and_(listed, pc.greater(n_boxes, 0))
    for image_id, n in zip(ids.filter(conflict).to_pylist(), n_boxes.filter(conflict).to_pylist()):
        errors.append((image_id, f"'{image_id}' is listed in {REVIEWED_EMPTY_FILE} but delivered with "
                                 f"{n} box(es); remove one of the two"))
    delivered = set(ids.filter(listed).to_pylist())
    added = [image_id for image_id in sorted(empty) if image_id not in delivered and image_id not in errored]
    labels = labels.filter(pc.invert(conflict))
    if added:
        labels = pa.concat_tables([labels, pa.table({
            "image_id": pa.array(added, pa.string()),
            "objects": pa.array([[]] * len(added), pa.list_(schemas.OBJECT))}, schema=schemas.LABEL_FIELDS)])
        labels = labels.take(pc.sort_indices(labels, [("image_id", "ascending")]))
        added_set = set(added)
        missing = [image_id for image_id in missing if image_id not in added_set]
    return Delivery(labels.combine_chunks(), errors, missing)


# -------------------------------------------------------------------------------------- completeness



