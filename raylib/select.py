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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

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
    if diverse:
        selection = spread_out(selection, out.embeddings, strategy.k,
                               covered if covered and storage.exists(covered) else None)
    selection = apply_budget(selection, strategy.budget)

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
