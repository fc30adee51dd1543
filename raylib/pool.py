"""The pool manifest (schemas.POOL): one row per image, `image_id` a stable relative key.

Listing is the first wall at scale (ray-project/ray#40686), so the pool is indexed once into Parquet
and every stage reads image bytes from the manifest's URIs. Indexing streams: local folders are
walked with `os.scandir` one directory at a time, S3 prefixes with boto3's `list_objects_v2`
(sub-prefixes in parallel threads), and rows go to a ParquetWriter in batches, so millions of keys never sit in memory.
A manifest is written to a temporary sibling and moved into place, so readers never see half of one.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from raylib import paths, schemas, storage
from raylib.config import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WRITE_BATCH_ROWS = 65_536
# S3 listing: the first levels of sub-prefixes are listed with a delimiter, then this many threads
# list the sub-prefixes whole at once (benchmarks/s3_listing.py).
LIST_THREADS = 16
FAN_OUT_LEVELS = 2


class PoolError(ConfigError):
    """An image set or folder that can't be indexed; the message names the input and what to fix (a job
    prints it as one line, as a bad config value)."""


# ----------------------------------------------------------------------------------------- writing


def _write_rows(rows: Iterable[tuple[str, str]], out_uri: str) -> int:
    """Write (image_id, uri) rows to a POOL Parquet file in batches; width/height are null."""

    def batches() -> Iterator[pa.RecordBatch]:
        ids: list[str] = []
        uris: list[str] = []
        for image_id, uri in rows:
            ids.append(image_id)
            uris.append(uri)
            if len(ids) >= WRITE_BATCH_ROWS:
                yield _pool_batch(ids, uris)
                ids, uris = [], []
        if ids:
            yield _pool_batch(ids, uris)

    return storage.write_batches(batches(), out_uri, schemas.POOL)


def _pool_batch(ids: list[str], uris: list[str]) -> pa.RecordBatch:
    nulls = pa.nulls(len(ids), pa.int32())
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array(uris, pa.string()), nulls, nulls], schema=schemas.POOL
    )


# ------------------------------------------------------------------------------------------ VOC sets


def _set_ids(voc_root: str, set_name: str) -> Iterator[str]:
    """Image ids of `ImageSets/Main/<set>.txt`: first token per line, blank lines skipped."""
    set_uri = storage.join(voc_root, "ImageSets", "Main", f"{set_name}.txt")
    try:
        text = storage.read_text(set_uri)
    except FileNotFoundError:
        raise PoolError(f"image set '{set_uri}' not found; check data.root and data.pool_sets/test_sets") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            yield paths.safe_relpath(tokens[0])
        except paths.UnsafeIdError as exc:
            raise PoolError(f"image set '{set_uri}' line {line_no}: {exc}") from None


def index_voc(voc_root: str, sets: list[str], out_uri: str) -> int:
    """Index the images of VOC image sets into a manifest at `out_uri`; returns the image count.

    An id listed in several sets (or twice) is kept once, at its first place. Image URIs are
    `<voc_root>/JPEGImages/<id>.jpg` (local roots made absolute); width/height stay null (read when
    the image is decoded).
    """
    if not sets:
        raise PoolError(f"no image sets given for '{voc_root}'; set data.pool_sets / data.test_sets")
    # Absolute local URIs: Ray workers may run in another working directory.
    images = storage.join(voc_root if storage.is_s3(voc_root) else os.path.abspath(voc_root), "JPEGImages")

    def rows() -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for set_name in sets:
            for image_id in _set_ids(voc_root, set_name):
                if image_id not in seen:
                    seen.add(image_id)
                    yield image_id, storage.join(images, f"{image_id}.jpg")

    return _write_rows(rows(), out_uri)


# -------------------------------------------------------------------------------------------- folders


def _is_image(relpath: str, extensions: tuple[str, ...]) -> bool:
    """Image files by extension, case-insensitively (cameras write `.JPG`); hidden parts are junk."""
    if any(part.startswith(".") for part in relpath.split("/")):
        return False
    return relpath.lower().endswith(extensions)


def _walk_local(root: str) -> Iterator[str]:
    """Relative '/'-separated paths of the files under `root`, in the order S3 lists keys.

    Holds one sorted directory listing per level of depth, never the whole tree; hidden entries are
    skipped and symlinked directories are not followed (no cycles).
    """
    stack = [iter(_listing(root, ""))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.endswith("/"):
            stack.append(iter(_listing(root, entry[:-1])))
        else:
            yield entry


def _listing(root: str, rel_dir: str) -> list[str]:
    """Visible entries of one directory as relative paths, directories with a trailing '/', sorted
    as full keys sort (so 'a.jpg' < 'a/x.jpg', as in S3)."""
    entries = [rel + "/" if is_dir else rel for rel, is_dir in storage.visible_entries(root, rel_dir)]
    return sorted(entries)


def _s3_level(client, bucket: str, prefix: str) -> tuple[list[str], list[str]]:
    """One level of an S3 "folder": (keys directly under `prefix`, its sub-prefixes), all pages."""
    keys, prefixes = [], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        keys += [item["Key"] for item in page.get("Contents", [])]
        prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
    return keys, prefixes


def _s3_all(client, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, in S3's order (one paginator, no delimiter)."""
    return [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]


def _walk_s3(root_uri: str, threads: int = LIST_THREADS, fan_out_levels: int = FAN_OUT_LEVELS) -> Iterator[str]:
    """Keys under an s3:// prefix relative to it, in S3's (lexicographic) order.

    One paginator returns 1,000 keys a request, one request after another: millions of keys take
    thousands of round trips in a row. So the first `fan_out_levels` levels of "folders" are listed with
    a delimiter, and the sub-prefixes found are listed whole by `threads` threads at once, at most
    2 x `threads` prefixes ahead of the one being written (memory: those prefixes' keys). Sorting the
    keys and sub-prefixes of a level and expanding each prefix in place keeps S3's global order
    ('a/b.jpg' < 'a/b/...' as '.' < '/')."""
    import boto3

    bucket, prefix = storage.s3_bucket_prefix(root_uri)
    client = boto3.client("s3")
    # Each entry: (key or prefix, is_prefix); prefixes of the last fan-out level are listed whole.
    entries: list[tuple[str, bool]] = [(prefix, True)]
    with ThreadPoolExecutor(max_workers=threads) as executor:
        for _ in range(fan_out_levels):
            folders = [name for name, is_prefix in entries if is_prefix]
            if not folders:
                break
            levels = dict(zip(folders, executor.map(lambda p: _s3_level(client, bucket, p), folders)))
            expanded: list[tuple[str, bool]] = []
            for name, is_prefix in entries:
                if is_prefix:
                    keys, subs = levels[name]
                    expanded += sorted([(k, False) for k in keys] + [(p, True) for p in subs])
                else:
                    expanded.append((name, False))
            entries = expanded
        pending: deque = deque()
        for name, is_prefix in entries:
            pending.append(executor.submit(_s3_all, client, bucket, name) if is_prefix else name)
            while len(pending) > 2 * threads or (pending and isinstance(pending[0], str)):
                yield from _keys_of(pending.popleft(), prefix)
        while pending:
            yield from _keys_of(pending.popleft(), prefix)


def _keys_of(entry, prefix: str) -> Iterator[str]:
    for key in [entry] if isinstance(entry, str) else entry.result():
        if not key.endswith("/"):  # "folder" marker objects
            yield key[len(prefix):]


def iter_folder(root_uri: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Iterator[pa.RecordBatch]:
    """POOL batches of every image under a local folder or s3:// prefix, streaming.

    image_id is the path relative to `root_uri` ('/'-separated, with its extension). Files with
    other extensions, hidden files and hidden directories are skipped; ids that `safe_relpath`
    refuses are skipped with a warning."""
    extensions = tuple(ext.lower() for ext in extensions)
    if storage.is_s3(root_uri):
        base = root_uri.rstrip("/")
        relpaths = _walk_s3(root_uri)
    else:
        base = os.path.abspath(root_uri)
        if not os.path.isdir(base):
            raise PoolError(f"image folder '{root_uri}' does not exist or is not a directory")
        relpaths = _walk_local(base)
    ids: list[str] = []
    for rel in relpaths:
        if not _is_image(rel, extensions):
            continue
        try:
            paths.safe_relpath(rel)
        except paths.UnsafeIdError as exc:
            log.warning("skipping '%s' under %s: %s", rel[:200], root_uri, exc)
            continue
        ids.append(rel)
        if len(ids) >= WRITE_BATCH_ROWS:
            yield _pool_batch(ids, [storage.join(base, rel) for rel in ids])
            ids = []
    if ids:
        yield _pool_batch(ids, [storage.join(base, rel) for rel in ids])


def first_images(root_uri: str, n: int, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Up to `n` image ids under a folder or prefix, stopping there (a dry run's look, not an index);
    [] for a folder that does not exist."""
    if not storage.is_s3(root_uri) and not os.path.isdir(root_uri):
        return []
    # S3: page by page as listed (the first pages come at once); a folder: in S3's order.
    walk = storage.iter_files(root_uri) if storage.is_s3(root_uri) else _walk_local(os.path.abspath(root_uri))
    found = []
    for rel in walk:
        if _is_image(rel, tuple(ext.lower() for ext in extensions)):
            found.append(rel)
            if len(found) >= n:
                break
    return found


def index_folder(root_uri: str, out_uri: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> int:
    """Index every image under a local folder or s3:// prefix into a manifest (`iter_folder`); returns the count."""
    return storage.write_batches(iter_folder(root_uri, extensions), out_uri, schemas.POOL)


# ------------------------------------------------------------------------------------------ reading


def iter_manifest(uri: str, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Stream a manifest (one Parquet file or a directory of them) as POOL record batches."""
    for batch in storage.iter_parquet_batches(uri, batch_size=batch_size):
        table = schemas.check(pa.Table.from_batches([batch]), schemas.POOL, f"pool manifest '{uri}'")
        yield from table.to_batches()


def image_uris(manifest_uri: str, image_ids: list[str]) -> dict[str, str]:
    """image_id -> uri for `image_ids`, reading only the matching rows of the (possibly huge) manifest."""
    table = uris_of(manifest_uri, pa.array(sorted(set(image_ids)), pa.string()))
    return dict(zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist()))


def uris_of(manifest_uri: str, ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """(image_id, uri) of the manifest rows whose image_id is in `ids`, in the manifest's order, in Arrow:
    one hash join (`_rows_in`). A Parquet read with an `isin` filter hashes `ids` again for every batch:
    6.6 s vs 1.4 s for 7x10^5 of 10^6 ids."""
    if not len(ids):
        return pa.table({"image_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())})
    return _rows_in(manifest_uri, pa.table({"image_id": ids}), ["image_id", "uri"]).select(["image_id", "uri"])


def with_sizes(items: pa.Table, image_status_uri: str) -> pa.Table:
    """`items` (image_id, uri) with the width and height scoring read from each image's header
    (`image_status`; null where it has none): one join, no image opened again."""
    sizes = _rows_in(image_status_uri, items, ["image_id", "width", "height"])
    found = pc.index_in(items.column("image_id"), value_set=sizes.column("image_id").combine_chunks())
    return items.append_column("width", sizes.column("width").take(found)).append_column(
        "height", sizes.column("height").take(found))


def round_pool(rp: paths.RoundPaths, pool_manifest: str) -> str:
    """What a round scores: its unlabelled manifest when the loop wrote one, else the whole pool
    (single-stage jobs run outside the loop)."""
    return rp.unlabelled if storage.exists(rp.unlabelled) else pool_manifest


# Labelled ids hashed at once by write_remaining's join (~220 B each in Acero's hash table): a larger
# labelled set is joined in parts, each part one more scan of the manifest's id column.
JOIN_KEYS = 1_000_000


def _labelled_parts(labelled: str | Iterable[str]) -> Iterator[pa.Table]:
    """The ids to leave out, as one-column (image_id) tables of at most about JOIN_KEYS rows: read
    batch by batch from a labels file (a URI), or made from the given ids."""
    if isinstance(labelled, str):
        batches: list[pa.RecordBatch] = []
        for batch in storage.iter_parquet_batches(labelled, columns=["image_id"]):
            batches.append(batch)
            if sum(b.num_rows for b in batches) >= JOIN_KEYS:
                yield pa.Table.from_batches(batches)
                batches = []
        if batches:
            yield pa.Table.from_batches(batches)
        return
    table = pa.table({"image_id": pa.array(sorted(set(labelled)), pa.string())})
    for start in range(0, table.num_rows, JOIN_KEYS):
        yield table.slice(start, JOIN_KEYS)


def _labelled_rows(manifest_uri: str, labelled: pa.Table) -> np.ndarray:
    """Positions (row numbers) of the manifest rows whose image_id is in `labelled`."""
    return _rows_in(manifest_uri, labelled, []).column("row").to_numpy()


def _rows_in(manifest_uri: str, ids: pa.Table, columns: list[str]) -> pa.Table:
    """`columns` and the position (`row`) of the manifest rows whose image_id is in `ids`, in the
    manifest's order: one Acero hash join (left semi) of the streamed manifest against a hash table of
    `ids` built once. Memory: that hash table and the rows found, never the pool's ids."""
    read = ["image_id", *[name for name in columns if name != "image_id"]]
    schema = pa.schema([*[pa.field(name, schemas.POOL.field(name).type) for name in read], pa.field("row", pa.int64())])

    def numbered() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in storage.iter_parquet_batches(manifest_uri, columns=read):
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays([*[batch.column(name).cast(schema.field(name).type) for name in read],
                                              pa.array(np.arange(start, start + n, dtype=np.int64))], schema=schema)
            start += n

    source = acero.Declaration("record_batch_reader_source", acero.RecordBatchReaderSourceNodeOptions(
        pa.RecordBatchReader.from_batches(schema, numbered())))
    build = acero.Declaration("table_source", acero.TableSourceNodeOptions(
        ids.select(["image_id"]).cast(pa.schema([pa.field("image_id", pa.string())]))))
    join = acero.Declaration("hashjoin", acero.HashJoinNodeOptions("left semi", ["image_id"], ["image_id"],
                                                                         left_output=[*columns, "row"]),
                             inputs=[source, build])
    rows = join.to_table(use_threads=True)  # in no particular order (threads)
    return rows.take(pc.sort_indices(rows.column("row")))


def write_labelled(manifest_uri: str, labelled: str, out_uri: str) -> int:
    """The manifest rows whose image_id is in the labels file `labelled`, in the manifest's order:
    `write_remaining`'s complement (the same join). Returns the rows written."""
    return _write_rows_of(manifest_uri, labelled, out_uri, keep_labelled=True)


def write_remaining(manifest_uri: str, labelled: str | Iterable[str], out_uri: str) -> int:
    """Copy the manifest to `out_uri` without the rows whose image_id is labelled: the unlabelled pool of
    a round, in the manifest's order. `labelled` is a labels file (its image_id column is read, never
    turned into Python strings) or the ids themselves. Returns the rows written.

    One anti-join: the labelled rows are found by `_labelled_rows` (a hash table built once per
    JOIN_KEYS labelled ids; `pc.is_in` per batch rebuilt it for every 65k rows: 7.3 s at 10^6 pool /
    9x10^5 labelled), then the manifest is streamed again and those rows dropped, so the output keeps
    the manifest's order and memory stays one hash table, one batch and the labelled rows' positions."""
    return _write_rows_of(manifest_uri, labelled, out_uri, keep_labelled=False)


def _write_rows_of(manifest_uri: str, labelled: str | Iterable[str], out_uri: str, keep_labelled: bool) -> int:
    parts = [_labelled_rows(manifest_uri, part) for part in _labelled_parts(labelled)]
    found = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # sorted, each once

    def kept() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in iter_manifest(manifest_uri):
            n = batch.num_rows
            lo, hi = np.searchsorted(found, [start, start + n])
            mask = np.zeros(n, dtype=bool)
            mask[found[lo:hi] - start] = True
            start += n
            yield batch.filter(pa.array(mask if keep_labelled else ~mask))

    return storage.write_batches(kept(), out_uri, schemas.POOL)


def shared_ids(small_uri: str, large_uri: str, limit: int = 5) -> tuple[int, list[str]]:
    """How many image ids of manifest `small_uri` also appear in `large_uri`, and up to `limit` of them.
    Holds only the smaller manifest's ids (e.g. the test set), streaming the larger (the pool)."""
    small = pa.concat_arrays([batch.column("image_id") for batch in iter_manifest(small_uri)] or
                             [pa.array([], pa.string())])
    count, examples = 0, []
    for batch in iter_manifest(large_uri):
        found = batch.column("image_id").filter(pc.is_in(batch.column("image_id"), value_set=small))
        count += len(found)
        examples += found.to_pylist()[: limit - len(examples)]
    return count, examples

