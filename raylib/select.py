"""Class-balanced selection (seed pseudo-code 2).

For each class c, among detections with score > min_score: threshold_c = the k-th lowest score (the
highest one when the class has fewer than k). Every image holding a detection of class c with
score <= threshold_c is selected; the round's selection is the union over classes.

`select_per_class` is the rule on an in-memory frame. `select_round` is the same rule over the
Parquet files of a round in two streaming passes (1: per-class k lowest scores -> thresholds;
2: rows at or under their class threshold), so memory is O(classes x k + selected rows), never
O(detections). Ties are broken by (score, image_id), so the output is deterministic.

Diversity strategies (`strategies.DIVERSE`) run the same two passes with pool_factor x k in place of k:
those are each class's candidates, and `spread_out` keeps k of them by k-center greedy on their
embeddings. Their thresholds are then the candidate pools' limits.

`strategy.budget` (None: the seed's rule, the union as it falls) makes a round exactly `budget` images, or
every image scored this round when fewer: a larger union is trimmed to its lowest-scoring images
(`apply_budget`); a smaller one is filled (`fill_to_budget`) by round-robin over classes (class 0's next
image, class 1's next, ...; a class whose next image is taken moves to its following one), from, in turn:
a diversity strategy's further k-center picks; each class's next lowest-scoring images (a third streamed
pass, `next_candidates`: classes x shortfall rows); the round's ok images with no candidate detection, in a
seeded random order (class_id -1, score 1.0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raylib import diversity, schemas, storage, strategies
from raylib.config import StrategyConfig
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)

SELECTION_COLUMNS = ["image_id", "class_id", "score", "rank"]


def class_thresholds(detections: pd.DataFrame, k: int, min_score: float) -> dict[int, float]:
    """{class_id: k-th lowest score above min_score} for every class with at least one candidate."""
    candidates = detections[detections["score"] > min_score]
    return {
        int(class_id): float(np.sort(group["score"].to_numpy())[: k][-1])
        for class_id, group in candidates.groupby("class_id")
    }


def select_per_class(detections: pd.DataFrame, k: int = 100, min_score: float = 0.2) -> pd.DataFrame:
    """Pseudo-code 2 on a frame with image_id, class_id, score. One row per (image, class quota that
    selected it) with that image's lowest score in the class, and its rank within the class."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    thresholds = class_thresholds(detections, k, min_score)
    candidates = detections[detections["score"] > min_score]
    limit = candidates["class_id"].map(thresholds)
    chosen = candidates[candidates["score"] <= limit]
    return _rank(chosen[["image_id", "class_id", "score"]])


def _rank(rows: pd.DataFrame) -> pd.DataFrame:
    """Collapse to one row per (image, class) at its lowest score; rank within each class."""
    if rows.empty:
        return pd.DataFrame({"image_id": pd.Series(dtype=str), "class_id": pd.Series(dtype=np.int16),
                             "score": pd.Series(dtype=np.float32), "rank": pd.Series(dtype=np.int32)})
    best = (rows.sort_values(["class_id", "score", "image_id"], kind="stable")
                .drop_duplicates(["image_id", "class_id"], keep="first"))
    best = best.assign(rank=best.groupby("class_id").cumcount().astype(np.int32))
    return best.reset_index(drop=True).astype({"class_id": np.int16, "score": np.float32})[SELECTION_COLUMNS]


def spread_out(candidates: pd.DataFrame, embeddings_uri: str, k: int, covered: str | None = None) -> pd.DataFrame:
    """k of each class's candidate rows (a `_rank` frame) by k-center greedy on the images' embeddings;
    `rank` becomes the pick order. The images of `covered` (an embeddings folder: the labelled set's)
    count as picked already; with none, the first pick is the most informative candidate (rank 0)."""
    if candidates.empty:
        return candidates
    ids = candidates["image_id"].unique().tolist()
    vectors = diversity.read_embeddings(embeddings_uri, ids)
    nearest = dict(zip(ids, diversity.distance_to_covered(np.stack([vectors[i] for i in ids]), covered)))
    kept = []
    for _, group in candidates.groupby("class_id", sort=True):
        group = group.sort_values("rank", kind="stable")
        picks = diversity.k_center_greedy(np.stack([vectors[i] for i in group["image_id"]]), k,
                                          np.array([nearest[i] for i in group["image_id"]], np.float32))
        kept.append(group.iloc[picks].assign(rank=np.arange(len(picks), dtype=np.int32)))
    return pd.concat(kept, ignore_index=True)[SELECTION_COLUMNS]


def apply_budget(selection: pd.DataFrame, budget: int | None) -> pd.DataFrame:
    """Keep at most `budget` images: those whose lowest score is lowest (ties by image id)."""
    if budget is None or selection["image_id"].nunique() <= budget:
        return selection
    per_image = selection.groupby("image_id")["score"].min().reset_index()
    keep = set(per_image.sort_values(["score", "image_id"], kind="stable")["image_id"].head(budget))
    return selection[selection["image_id"].isin(keep)].reset_index(drop=True)


def round_robin(candidates: pd.DataFrame, taken: set[str], n: int) -> pd.DataFrame:
    """Up to `n` rows of `candidates` (a `_rank` frame: each class's images in `rank` order), one per image
    not in `taken`: class 0's first, class 1's first, ..., then each class's second, and so on; a class
    whose next image is already taken (before or by another class's pick) moves on to its following one.
    A loop over picks (at most the shortfall of a budget), not over the pool."""
    candidates = candidates.reset_index(drop=True)
    image_ids = candidates["image_id"].tolist()
    queues = [group.sort_values("rank", kind="stable").index.tolist()
              for _, group in candidates.groupby("class_id", sort=True)]
    positions = [0] * len(queues)
    taken, picks = set(taken), []
    while len(picks) < n and any(p < len(q) for p, q in zip(positions, queues)):
        for c, queue in enumerate(queues):
            while positions[c] < len(queue) and image_ids[queue[positions[c]]] in taken:
                positions[c] += 1
            if positions[c] < len(queue) and len(picks) < n:
                picks.append(queue[positions[c]])
                taken.add(image_ids[queue[positions[c]]])
                positions[c] += 1
    return candidates.iloc[picks]


def next_candidates(detections_uri: str, min_score: float, exclude: list[str], per_class: int) -> pd.DataFrame:
    """Each class's `per_class` lowest-scoring images (an image's lowest score in the class, ties by image
    id) among detections above `min_score` of images not in `exclude`, as a `_rank` frame; streamed, keeping
    at most classes x per_class rows plus a buffer (an image cut early comes back if a lower row of it comes
    later)."""
    excluded = pa.array(sorted(exclude), pa.string())
    kept, pending, n_pending = _rank(pd.DataFrame()), [], 0
    limits = np.zeros(0, dtype=np.float32)  # per class: the highest score kept once it keeps per_class images
    for batch in storage.iter_parquet_batches(detections_uri, columns=["image_id", "class_id", "score"]):
        scores = batch.column("score").to_numpy()
        class_ids = batch.column("class_id").to_numpy().astype(np.int64)
        # A row above its class's full list can't enter it (an equal score may: ties go by image id).
        limit = limits[np.clip(class_ids, 0, len(limits) - 1)] if len(limits) else np.full(len(scores), np.inf)
        in_range = (class_ids >= 0) & (class_ids < len(limits))
        mask = (scores > min_score) & (scores <= np.where(in_range, limit, np.inf))
        if not mask.any():
            continue
        rows = batch.filter(pa.array(mask))
        rows = rows.filter(pc.invert(pc.is_in(rows.column("image_id"), value_set=excluded)))
        pending.append(rows)
        n_pending += rows.num_rows
        if n_pending > max(len(kept), ROWS_PER_MERGE):  # merging sorts `kept` again: not once per batch
            kept, limits = _merge(kept, pending, per_class)
            pending, n_pending = [], 0
    return _merge(kept, pending, per_class)[0] if pending else kept


ROWS_PER_MERGE = 65536


def _merge(kept: pd.DataFrame, pending: list[pa.RecordBatch], per_class: int) -> tuple[pd.DataFrame, np.ndarray]:
    """`kept` and the `pending` rows as each class's `per_class` lowest images; and per class the highest
    score kept where a class keeps `per_class` (inf elsewhere): no row above it can enter any more."""
    rows = pa.Table.from_batches(pending).to_pandas() if pending else kept.iloc[:0]
    kept = _rank(pd.concat([kept, rows[["image_id", "class_id", "score"]]], ignore_index=True))
    kept = kept[kept["rank"] < per_class].reset_index(drop=True)
    if kept.empty:
        return kept, np.zeros(0, dtype=np.float32)
    full = kept.groupby("class_id")["score"].agg(["max", "size"])
    full = full[full["size"] >= per_class]
    limits = np.full(int(kept["class_id"].max()) + 1, np.inf, dtype=np.float32)
    limits[full.index.to_numpy(dtype=np.int64)] = full["max"].to_numpy(dtype=np.float32)
    return kept, limits


def images_without_candidates(image_status_uri: str, exclude: list[str], n: int, seed: int) -> pd.DataFrame:
    """Up to `n` ok images of the round not in `exclude`, in a seeded random order (strategies'
    per-image uniform draw), as selection rows of no class (class_id -1, score 1.0); streamed, keeping n."""
    excluded = pa.array(sorted(exclude), pa.string())
    ids, draws = np.empty(0, dtype=object), np.empty(0, dtype=np.float32)
    for batch in storage.iter_parquet_batches(image_status_uri, columns=["image_id", "status"]):
        mask = pc.and_(pc.equal(batch.column("status"), schemas.STATUS_OK),
                       pc.invert(pc.is_in(batch.column("image_id"), value_set=excluded)))
        new_ids = np.asarray(batch.column("image_id").filter(mask).to_pylist(), dtype=object)
        ids = np.concatenate([ids, new_ids])
        draws = np.concatenate([draws, strategies.uniform_per_image(new_ids, seed)])
        order = np.lexsort((ids.astype(str), draws))[:n] if len(ids) else np.zeros(0, dtype=np.int64)
        ids, draws = ids[order], draws[order]
    return pd.DataFrame({"image_id": ids.astype(str), "class_id": np.full(len(ids), -1, np.int16),
                         "score": np.ones(len(ids), np.float32), "rank": np.arange(len(ids), dtype=np.int32)})


def fill_to_budget(selection: pd.DataFrame, budget: int, reserve: pd.DataFrame, detections_uri: str,
                   image_status_uri: str, min_score: float, seed: int) -> pd.DataFrame:
    """`selection` (fewer than `budget` images) filled to `budget` images, or to every image scored this
    round: by `round_robin` over `reserve` (a diversity strategy's further picks, in pick order), then over
    `next_candidates`, then `images_without_candidates`. A filled row's rank continues its class's ranks."""
    def shortfall() -> int:
        return budget - len(taken)

    taken = set(selection["image_id"])
    parts = [selection]
    tiers = (lambda: reserve,
             lambda: next_candidates(detections_uri, min_score, sorted(taken), shortfall()),
             lambda: images_without_candidates(image_status_uri, sorted(taken), shortfall(), seed))
    for tier in tiers:
        if shortfall() <= 0:
            break
        picked = round_robin(tier(), taken, shortfall())
        taken.update(picked["image_id"])
        parts.append(picked)
    fill = pd.concat(parts[1:], ignore_index=True)
    after = selection.groupby("class_id")["rank"].max() + 1
    fill["rank"] = fill["class_id"].map(after).fillna(0).to_numpy() + fill.groupby("class_id").cumcount().to_numpy()
    filled = pd.concat([selection, fill], ignore_index=True)
    return filled.astype({"class_id": np.int16, "score": np.float32, "rank": np.int32})[SELECTION_COLUMNS]


@dataclass
class SelectionSummary:
    n_images: int
    n_rows: int
    n_candidates: int
    thresholds: dict[int, float]


class _BottomK:
    """The k lowest scores per class seen so far: O(classes x k) memory."""

    def __init__(self, num_classes: int, k: int):
        self.k = k
        self.lowest = [np.empty(0, dtype=np.float32) for _ in range(num_classes)]
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def add(self, class_ids: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(class_ids, kind="stable")
        class_ids, scores = class_ids[order], scores[order]
        bounds = np.flatnonzero(np.diff(class_ids)) + 1
        for ids, values in zip(np.split(class_ids, bounds), np.split(scores, bounds)):
            if not len(ids):
                continue
            c = int(ids[0])
            if not 0 <= c < len(self.lowest):
                raise ValueError(f"detection class_id {c} is outside 0..{len(self.lowest) - 1}")
            self.counts[c] += len(values)
            merged = np.concatenate([self.lowest[c], values])
            self.lowest[c] = np.sort(merged)[: self.k] if len(merged) > self.k else merged

    def thresholds(self) -> dict[int, float]:
        return {c: float(np.max(values)) for c, values in enumerate(self.lowest) if len(values)}


def select_round(detections_uri: str, strategy: StrategyConfig, round_idx: int, out: RoundPaths,
                 num_classes: int, covered: str | None = None) -> SelectionSummary:
    """Pseudo-code 2 over every Parquet file under `detections_uri`, streaming; writes the round's
    selection and per-class thresholds (figure 6.5). `covered`: a diversity strategy's labelled set's
    embeddings (`spread_out`), when they exist."""
    min_score = strategies.selection_min_score(strategy.name, strategy.min_score)
    diverse = strategy.name in strategies.DIVERSE
    bottom = _BottomK(num_classes, strategy.k * strategy.pool_factor if diverse else strategy.k)
    for batch in storage.iter_parquet_batches(detections_uri, columns=["class_id", "score"]):
        class_ids = batch.column("class_id").to_numpy()
        scores = batch.column("score").to_numpy()
        keep = scores > min_score
        bottom.add(class_ids[keep], scores[keep])
    thresholds = bottom.thresholds()

    limits = np.full(num_classes, -np.inf, dtype=np.float32)
    for c, threshold in thresholds.items():
        limits[c] = threshold
    chosen: list[pd.DataFrame] = []
    for batch in storage.iter_parquet_batches(detections_uri, columns=["image_id", "class_id", "score"]):
        scores = batch.column("score").to_numpy()
        class_ids = batch.column("class_id").to_numpy().astype(np.int64)
        # Pass 1 refused out-of-range classes among candidates; others can't be selected anyway.
        in_range = (class_ids >= 0) & (class_ids < num_classes)
        limit = np.where(in_range, limits[np.clip(class_ids, 0, num_classes - 1)], -np.inf)
        mask = (scores > min_score) & (scores <= limit)
        if mask.any():
            chosen.append(_rank(batch.filter(pa.array(mask)).to_pandas()))  # collapse early
    selection = _rank(pd.concat(chosen, ignore_index=True)) if chosen else _rank(pd.DataFrame())
    reserve = _rank(pd.DataFrame())
    if diverse:  # with a budget, k-center goes on past k: the picks after the k-th may fill the budget
        picks = strategy.k + (strategy.budget or 0)
        ordered = spread_out(selection, out.embeddings, picks, covered if covered and storage.exists(covered) else None)
        selection, reserve = ordered[ordered["rank"] < strategy.k], ordered[ordered["rank"] >= strategy.k]
    selection = apply_budget(selection.reset_index(drop=True), strategy.budget)
    if strategy.budget is not None and selection["image_id"].nunique() < strategy.budget:
        selection = fill_to_budget(selection, strategy.budget, reserve.reset_index(drop=True), detections_uri,
                                   out.image_status, min_score, strategy.seed)

    table = pa.Table.from_pandas(selection.assign(round=np.int16(round_idx)), preserve_index=False)
    storage.write_table(schemas.check(table, schemas.SELECTION, "selection"), out.selection)
    threshold_table = pa.table({
        "round": pa.array([round_idx] * num_classes, pa.int16()),
        "class_id": pa.array(range(num_classes), pa.int16()),
        "threshold": pa.array([thresholds.get(c) for c in range(num_classes)], pa.float32()),
        "n_candidates": pa.array(bottom.counts, pa.int64()),
    })
    storage.write_table(schemas.check(threshold_table, schemas.THRESHOLDS, "thresholds"), out.thresholds)
    n_images = selection["image_id"].nunique()
    log.info("round %d: selected %d images (%d class quotas)", round_idx, n_images, len(selection))
    return SelectionSummary(n_images=int(n_images), n_rows=len(selection),
                            n_candidates=int(bottom.counts.sum()), thresholds=thresholds)
