"""k-center greedy on image embeddings: the diversity half of `strategy=cls_iou_diverse` and `kcenter`;
and TypiClust's typical picks for a cold start (`loop.seed_strategy=typical`).

Selection (raylib.select) hands over each class's candidates, most informative first; `k_center_greedy`
picks k of them so that every candidate is close to a pick (Sener & Savarese, 2018; PPAL's second
stage). Memory is the candidates' embeddings only (classes x pool_factor x k rows, a few MB), never the
pool: `read_embeddings` streams the round's embeddings/ parts and keeps the candidates' rows.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylib import storage

# Embeddings are written in row groups of this many rows and read a row group at a time: ~8 MB of
# nano's 448 float16 each, whatever the size of a part.
ROWS_PER_READ = 8192


def _unit(vectors: np.ndarray) -> np.ndarray:
    unit = vectors.astype(np.float32)
    return unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)


def k_center_greedy(embeddings: np.ndarray, k: int, nearest: np.ndarray | None = None) -> np.ndarray:
    """Indexes of min(k, n) rows of `embeddings` [n, d], in pick order: each pick is the row farthest
    from everything covered so far (cosine distance: rows are compared as unit vectors, so an image's
    brightness or contrast doesn't make it "far"). `nearest` [n]: each row's distance to what is
    covered before the first pick (the labelled set: `distance_to_covered`); None: nothing, and the
    first pick is row 0 (callers order rows by informativeness). Ties go to the lower index, so the
    picks are a function of the rows and their order."""
    n = len(embeddings)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    unit = _unit(embeddings)
    nearest = np.full(n, np.inf, np.float32) if nearest is None else nearest.astype(np.float32).copy()
    picks: list[int] = []
    for _ in range(min(k, n)):
        pick = int(np.argmax(nearest))
        picks.append(pick)
        nearest = np.minimum(nearest, 1.0 - unit @ unit[pick])
        nearest[picks] = -np.inf  # never picked twice, even when every distance is 0
    return np.array(picks, dtype=np.int64)


def typical_picks(embeddings: np.ndarray, k: int, seed: int, neighbours: int = 20,
                  iterations: int = 50) -> np.ndarray:
    """Indexes of min(k, n) rows of `embeddings` [n, d]: the most typical row of each of k k-means
    clusters (TypiClust, Hacohen et al. 2022: at a cold start, a model learns most from images that
    are dense in the data and cover its modes; uncertainty and k-center pick outliers there). Typicality
    is the inverse mean distance to a row's `neighbours` nearest rows in its cluster. Rows are unit
    vectors (cosine, as k_center_greedy); k-means++ from `seed`, so the picks are a function of the rows,
    their order and the seed. Memory: n x k distances."""
    n = len(embeddings)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    unit = _unit(embeddings)
    assign = _k_means(unit, k, np.random.default_rng(seed), iterations)
    picks = []
    for cluster in range(k):
        members = np.flatnonzero(assign == cluster)
        if len(members) == 0:
            continue
        distance = np.sqrt(np.maximum(2.0 - 2.0 * unit[members] @ unit[members].T, 0.0))
        nearest = np.sort(distance, axis=1)[:, 1:1 + neighbours]  # column 0: the row itself
        typicality = 1.0 / np.maximum(nearest.mean(axis=1), 1e-12) if nearest.size else np.ones(len(members))
        picks.append(int(members[np.argmax(typicality)]))  # ties: the lower index
    return np.array(picks, dtype=np.int64)


def _k_means(unit: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """Each row's cluster of k (Lloyd's, k-means++ seeding on squared distances); an emptied cluster
    takes the row farthest from its centre, so all k stay in use while n >= k."""
    centres = [int(rng.integers(len(unit)))]
    closest = np.maximum(2.0 - 2.0 * unit @ unit[centres[0]], 0.0)
    for _ in range(1, k):
        weights = closest / closest.sum() if closest.sum() > 0 else np.full(len(unit), 1.0 / len(unit))
        centres.append(int(rng.choice(len(unit), p=weights)))
        closest = np.minimum(closest, np.maximum(2.0 - 2.0 * unit @ unit[centres[-1]], 0.0))
    centre = unit[centres].copy()
    assign = np.full(len(unit), -1)
    for _ in range(iterations):
        squared = (unit * unit).sum(1)[:, None] - 2.0 * unit @ centre.T + (centre * centre).sum(1)[None, :]
        new = np.argmin(squared, axis=1)
        for empty in np.setdiff1d(np.arange(k), new):  # from a cluster of 2 or more (one exists: n >= k)
            gap = squared[np.arange(len(unit)), new]
            gap[np.bincount(new, minlength=k)[new] < 2] = -np.inf
            new[int(np.argmax(gap))] = empty
        if np.array_equal(new, assign):
            break
        assign = new
        for cluster in range(k):
            centre[cluster] = unit[assign == cluster].mean(axis=0)
    return assign


def _batches(uri: str, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """The Parquet parts under `uri`, `rows` at a time, one row group decoded at a time."""
    for part in storage.list_files(uri, ".parquet"):
        fs, path = storage.resolve(part)
        with fs.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=rows, columns=columns)


def distance_to_covered(embeddings: np.ndarray, covered_uri: str | None, chunk: int = 1024) -> np.ndarray:
    """Each row's cosine distance to its nearest embedding under `covered_uri` (inf when None or
    empty), streaming those a row group at a time in chunks of `chunk`: memory n x chunk floats."""
    nearest = np.full(len(embeddings), np.inf, np.float32)
    if covered_uri is None or not len(embeddings):
        return nearest
    unit = _unit(embeddings)
    for batch in _batches(covered_uri, ["embedding"], chunk):
        if batch.num_rows:
            values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
            nearest = np.minimum(nearest, (1.0 - unit @ _unit(values).T).min(axis=1))
    return nearest


def read_embeddings(embeddings_uri: str, image_ids: list[str]) -> dict[str, np.ndarray]:
    """{image_id: float32 embedding} for `image_ids`, streaming the Parquet parts under `embeddings_uri`
    one row group at a time (a dataset scanner reads ahead: ~400 MB more at 10^6 images) and keeping
    only those rows. Raises if a candidate has none (scoring writes one per ok image, and only ok images
    have detections)."""
    wanted = pa.array(sorted(set(image_ids)), pa.string())
    found: dict[str, np.ndarray] = {}
    for batch in _batches(embeddings_uri, ["image_id", "embedding"], ROWS_PER_READ):
        rows = batch.filter(pc.is_in(batch.column("image_id"), value_set=wanted))
        if rows.num_rows:
            column = rows.column("embedding")
            lengths = pc.list_value_length(column).to_numpy()
            values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            found.update(zip(rows.column("image_id").to_pylist(), np.split(values, np.cumsum(lengths)[:-1])))
    missing = [i for i in wanted.to_pylist() if i not in found]
    if missing:
        raise RuntimeError(f"{embeddings_uri}: no embedding for {len(missing)} candidate images "
                           f"(e.g. '{missing[0]}'); rescore the round (its score stage)")
    return found
