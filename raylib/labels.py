"""The labelled set (schemas.LABELS): which images are labelled, in which split, since which round.

    seed_labels        round 0: data.labelled, or `seed_size` random pool images (seed 6.5 step 2) with their
                       ground truth; with annotators and no data.labelled, the seed round's oracle (loop.py)
    oracle             labels for a round's selection: the dataset's ground truth (simulation) or annotators'
    perf_test_labels   ground truth of the fixed performance test set (split `perf_test`)
    standalone_labels  every pool image, for the train/evaluate jobs run outside the loop
    read_split         one split's labels with the URIs of its images (training, evaluation)

Every table is built by `as_labels` and every split assigned by `assign_splits` (stratified 70/15/15,
seed 6.6). Newly labelled images get a split; earlier ones keep theirs, so val/test never leak into train.
"""
from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import paths, pool, schemas, storage
from raylib.config import LoopConfig
from raylib.dataset import Dataset, ground_truth

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")



# ------------------------------------------------------------------------------------ building


def as_labels(table: pa.Table, split: str | pa.Array, round_added: int) -> pa.Table:
    """(image_id, objects) rows of `voc.read_voc_labels` -> a LABELS table; `split` one name or one per row."""
    splits = pa.array([split] * table.num_rows, pa.string()) if isinstance(split, str) else split
    return schemas.check(
        pa.table({"image_id": table.column("image_id"), "split": splits,
                  "round_added": pa.array(np.full(table.num_rows, round_added, np.int16)),
                  "objects": table.column("objects")}),
        schemas.LABELS, "labels",
    )


def assign_splits(table: pa.Table, fractions: tuple[float, float, float], seed: int, round_added: int) -> pa.Table:
    """Labels for newly labelled images (one row each), split train/val/test per stratum (the class an
    image is rarest in, its largest class id: small classes then reach every split), seeded by (seed,
    round). In Arrow and numpy: no Python object per image or per box (a take-all round is 10^6 images)."""
    objects = table.column("objects").combine_chunks() if table.num_rows else pa.array([], table.schema.field("objects").type)
    rarest = np.full(table.num_rows, -1, np.int64)
    np.maximum.at(rarest, pc.list_parent_indices(objects).to_numpy(),
                  pc.list_flatten(objects).field("class_id").to_numpy(zero_copy_only=False).astype(np.int64))
    strata = np.where(rarest < 0, "empty", rarest.astype(str))
    splits = stratified_split(table.column("image_id"), strata, tuple(fractions), seed=seed * 1000 + round_added)
    return as_labels(table, splits, round_added)


def stratified_split(image_ids: list[str] | pa.Array | pa.ChunkedArray, strata, fractions: tuple[float, float, float],
                     seed: int) -> pa.Array:
    """The split name (train/val/test) of each image, per stratum in the given fractions (seed 6.6:
    stratified 70/15/15); `image_ids` unique, `strata` one name per image.

    Strata are taken in name order; within one its ids are sorted, then shuffled with `seed`; counts use
    the largest remainder, so a stratum of n images gets round(n * fraction) of each split, with leftovers
    going to the largest fractions. Vectorised: the same splits as shuffling each stratum's id list."""
    ids = image_ids if isinstance(image_ids, (pa.Array, pa.ChunkedArray)) else pa.array(image_ids, pa.string())
    names, codes = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    split_of = np.zeros(len(ids), np.int64)
    for code in range(len(names)):
        members = np.flatnonzero(codes == code)
        members = members[pc.sort_indices(ids.take(pa.array(members))).to_numpy()]  # sorted by id
        order = np.arange(len(members))
        rng.shuffle(order)  # the same draws as shuffling the sorted id list itself
        exact = np.asarray(fractions) * len(members)
        counts = np.floor(exact).astype(int)
        for idx in np.argsort(-(exact - counts), kind="stable")[: len(members) - counts.sum()]:
            counts[idx] += 1
        split_of[members[order]] = np.searchsorted(np.cumsum(counts), np.arange(len(members)), side="right")
    return pa.array(SPLIT_NAMES, pa.string()).take(pa.array(split_of))


def sample_ids(manifest_uri: str, n: int, seed: int) -> list[str]:
    """A uniform random sample of `n` ids, streaming: each id gets a seeded hash key and the n smallest
    keys win, so memory is O(n) however large the pool, and the sample doesn't depend on file order."""
    heap: list[tuple[int, str]] = []  # max-heap of the n smallest keys, as negated keys
    for batch in pool.iter_manifest(manifest_uri):
        for image_id in batch.column("image_id").to_pylist():
            digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
            key = int.from_bytes(digest, "big")
            if len(heap) < n:
                heapq.heappush(heap, (-key, image_id))
            elif key < -heap[0][0]:
                heapq.heapreplace(heap, (-key, image_id))
    return sorted(image_id for _, image_id in heap)


def _truth(ds: Dataset, image_ids: list[str], which: str, warning: str) -> pa.Table:
    """Ground truth of `image_ids`; each image without usable labels is logged with `warning` % (id, why)."""
    table, errors = ground_truth(ds, image_ids, which)
    for image_id, message in errors:
        log.warning(warning, image_id, message)
    return table


def _write_once(uri: str, build: Callable[[], pa.Table]) -> str:
    if not storage.exists(uri):
        storage.write_table(build(), uri)
    return uri


def _manifest_ids(manifest_uri: str) -> list[str]:
    return [i for batch in pool.iter_manifest(manifest_uri) for i in batch.column("image_id").to_pylist()]


# ------------------------------------------------------------------------------- labelled sets


def perf_test_labels(run_root: str, ds: Dataset) -> str:
    """Ground truth of the fixed performance test set (split `perf_test`); once."""
    return _write_once(paths.perf_test_labels(run_root), lambda: as_labels(_truth(
        ds, _manifest_ids(ds.test_manifest), "test", "performance test image %s left out: %s"), "perf_test", 0))


def seed_from_annotators(ds: Dataset, loop: LoopConfig) -> bool:
    """Round 0's labels come from the annotators (the seed round's export and oracle, loop.py): the
    external oracle, no labelled set given (data.labelled), and a pool without ground truth (data=images
    without data.pool_labels). A dataset with labels (VOC, synthetic, COCO) seeds from them, as before,
    and its annotators start at round 0's selection."""
    has_truth = ds.voc_root is not None or ds.pool_truth is not None or ds.labelled_truth is not None
    return loop.oracle != "simulate" and not has_truth


def seed_labels(run_root: str, ds: Dataset, loop: LoopConfig, seed: int,
                seed_ids: Callable[[], list[str]] | None = None) -> str:
    """Round 0's labelled set, split per `loop.split`; once: the team's labelled set (data.labelled, the
    images of it that are in the pool), else the images `seed_ids()` chooses (default: `loop.seed_size`
    random pool images) with their ground truth."""
    if ds.labelled_truth is not None:
        def build() -> pa.Table:
            table = storage.read_table(ds.labelled_truth)
            in_pool = pa.array(sorted(set(_manifest_ids(ds.pool_manifest)) & set(table.column("image_id").to_pylist())),
                               pa.string())
            return table.filter(pc.is_in(table.column("image_id"), value_set=in_pool))
    else:
        def build() -> pa.Table:
            ids = seed_ids() if seed_ids else sample_ids(ds.pool_manifest, loop.seed_size, seed)
            return _truth(ds, ids, "pool", "seed image %s stays unlabelled: %s")
    return _write_once(paths.seed_labels(run_root), lambda: assign_splits(build(), loop.split, seed, round_added=0))


def standalone_labels(run_root: str, ds: Dataset, fractions: tuple[float, float, float], seed: int) -> str:
    """Every pool image with its ground truth, split as the seed set is: for running the train and
    evaluate jobs alone on the embedded defaults; once."""
    return _write_once(paths.standalone_labels(run_root), lambda: assign_splits(_truth(
        ds, sorted(_manifest_ids(ds.pool_manifest)), "pool", "pool image %s left out of the standalone labels: %s"),
        fractions, seed, round_added=0))


def labels_for_round(run_root: str, round_idx: int, ds: Dataset, fractions: tuple[float, float, float],
                     seed: int) -> str:
    """The labelled set the loop's round `round_idx` trains on; outside a loop, the standalone set."""
    uri = paths.round_labels(run_root, round_idx)
    return uri if storage.exists(uri) else standalone_labels(run_root, ds, fractions, seed)



def selected_ids(selection_uri: str) -> pa.Array:
    """The image ids of a selection, each once, sorted: an Arrow array (the take-all round selects the
    whole pool; no Python string per id), read batch by batch (a selection has a row per detection)."""
    unique = [pc.unique(batch.column(0)) for batch in storage.iter_parquet_batches(selection_uri, ["image_id"])]
    ids = pc.unique(pa.chunked_array(unique)) if unique else pa.array([], pa.string())
    return ids.take(pc.sort_indices(ids)).cast(pa.string())


# ------------------------------------------------------------------------------------- reading


def split_counts(labels_uri: str) -> dict[str, int]:
    counts = storage.read_table(labels_uri, columns=["split"]).column("split").value_counts().to_pylist()
    return {item["values"]: item["counts"] for item in counts}


def read_split(labels_uri: str, manifest_uri: str, split: str) -> tuple[pa.Table, list[tuple[str, str]], list[str]]:
    """Labels of `split`, their (image_id, uri) from the manifest, and the ids missing from it."""
    table = split_with_uris(labels_uri, manifest_uri, split)
    ids, uris = table.column("image_id").to_pylist(), table.column("uri").to_pylist()
    items = [(image_id, uri) for image_id, uri in zip(ids, uris) if uri is not None]
    missing = [image_id for image_id, uri in zip(ids, uris) if uri is None]
    return table.drop_columns(["uri"]), items, missing


def split_with_uris(labels_uri: str, manifest_uri: str, split: str) -> pa.Table:
    """The labels of `split` (LABELS columns, in the labels file's order) and `uri`, their image's URI in
    the manifest (null: not in it): one join of the split's ids with the manifest, all in Arrow (training
    workers take their shard of it without a Python object per image or per box)."""
    table = schemas.check(storage.read_table(labels_uri), schemas.LABELS, f"labels '{labels_uri}'")
    table = table.filter(pc.equal(table.column("split"), split))
    uris = pool.uris_of(manifest_uri, table.column("image_id"))
    found = pc.index_in(table.column("image_id"), value_set=uris.column("image_id").combine_chunks())
    return table.append_column("uri", uris.column("uri").take(found))
