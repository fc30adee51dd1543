"""Is YOLOX's objectness a predicted IoU? Calibration of `loc_conf` (and `cls_conf`) against true IoU.

    summary = calibrate_split(cfg.eval, model_cfg, weights_uri, labels_uri, manifest_uri, "val", class_names,
                              max_pixels, min_score, table_uri, summary_uri)

Detections come from the evaluate stage's own path (`evaluate.detect_split`: its device, its batch size).

On a labelled split, every detection the strategies would see (score = cls_conf x loc_conf >= min_score)
is matched to ground truth greedily by decreasing score: it takes the unmatched ground-truth box of its
class with the highest IoU, and that IoU is its true IoU; a detection left without one has true IoU 0.
Reported: Spearman's rank correlation of `loc_conf` and of `cls_conf` with true IoU, and a reliability
table (mean true IoU per `loc_conf` bin, with counts). A calibrated localisation confidence has a
reliability table on the diagonal and a high rank correlation.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa

from raylib import labels, metrics, storage
from raylib.config import EvalConfig, ModelConfig
from raylib.evaluate import detect_split
from raylib.metrics import BOX, labels_to_ground_truth

BIN_EDGES = np.linspace(0.0, 1.0, 11)  # loc_conf bins of the reliability table
CALIBRATION_SCHEMA = pa.schema([
    ("bin_lo", pa.float64()), ("bin_hi", pa.float64()), ("n", pa.int64()),
    ("mean_loc_conf", pa.float64()), ("mean_true_iou", pa.float64()), ("mean_cls_conf", pa.float64()),
])


def match_true_iou(detections: pd.DataFrame, ground_truth: pd.DataFrame) -> np.ndarray:
    """True IoU of each detection row (columns image_id, class_id, score, x1..y2), in row order.

    Per image and class, detections by decreasing score (ties in row order) each take the still unmatched
    ground-truth box with the highest IoU (> 0; the first in ground-truth order on a tie); that IoU is
    theirs. Unmatched detections (no box left, or no overlap): 0. Vectorised by rank: step k matches the
    k-th detection of every (image, class) group at once, so the loop runs as often as the largest group
    has detections, not once per detection."""
    true_iou = np.zeros(len(detections))
    if not len(detections) or not len(ground_truth):
        return true_iou
    group, gt_group = _groups(detections, ground_truth)
    by_score = np.argsort(-detections["score"].to_numpy(), kind="stable")
    order = by_score[np.argsort(group[by_score], kind="stable")]  # by group, each by decreasing score
    index = np.arange(len(order))
    first_of_group = np.r_[True, group[order][1:] != group[order][:-1]]
    rank = index - np.maximum.accumulate(np.where(first_of_group, index, 0))  # within its group
    by_rank = np.argsort(rank, kind="stable")  # every group's first detection, then every second, ...
    order, rank = order[by_rank], rank[by_rank]
    steps = np.searchsorted(rank, np.arange(rank[-1] + 2))
    box_of, gt_of, starts = metrics.pairs_by_group(group[order], gt_group)
    iou = metrics.pair_iou(detections[BOX].to_numpy(dtype=np.float64)[order][box_of],
                           ground_truth[BOX].to_numpy(dtype=np.float64)[gt_of])
    free = np.ones(len(ground_truth), dtype=bool)
    for first, last in zip(steps[:-1], steps[1:]):  # the k-th detection of every group: no two share a box
        lo, hi = starts[first], starts[last]
        best, pair = metrics.segment_max(np.where(free[gt_of[lo:hi]], iou[lo:hi], -1.0), starts[first:last + 1] - lo)
        matched = best > 0
        true_iou[order[first:last][matched]] = best[matched]
        free[gt_of[lo + pair[matched]]] = False
    return true_iou


def _groups(detections: pd.DataFrame, ground_truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One integer per (image_id, class_id) of each detection and each ground-truth row, the same for both."""
    image, _ = pd.factorize(np.concatenate([detections["image_id"].to_numpy(), ground_truth["image_id"].to_numpy()]))
    label, classes = pd.factorize(np.concatenate([detections["class_id"].to_numpy(), ground_truth["class_id"].to_numpy()]))
    group = image.astype(np.int64) * len(classes) + label
    return group[:len(detections)], group[len(detections):]


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson on average ranks, ties shared); nan if either is constant."""
    x, y = pd.Series(np.asarray(x, dtype=float)), pd.Series(np.asarray(y, dtype=float))
    if len(x) < 2:
        return float("nan")
    rx, ry = x.rank().to_numpy(), y.rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def reliability_table(loc_conf, true_iou, cls_conf=None, edges: np.ndarray = BIN_EDGES) -> pa.Table:
    """One row per `loc_conf` bin [lo, hi) (the last bin includes 1): count, mean loc_conf, mean true IoU,
    mean cls_conf (null where a bin is empty)."""
    loc_conf, true_iou = np.asarray(loc_conf, dtype=float), np.asarray(true_iou, dtype=float)
    cls_conf = np.full(len(loc_conf), np.nan) if cls_conf is None else np.asarray(cls_conf, dtype=float)
    index = np.clip(np.searchsorted(edges, loc_conf, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        mask = index == b
        n = int(mask.sum())
        rows.append({"bin_lo": float(edges[b]), "bin_hi": float(edges[b + 1]), "n": n,
                     "mean_loc_conf": float(loc_conf[mask].mean()) if n else None,
                     "mean_true_iou": float(true_iou[mask].mean()) if n else None,
                     "mean_cls_conf": float(cls_conf[mask].mean()) if n and not np.isnan(cls_conf[mask]).all() else None})
    return pa.Table.from_pylist(rows, schema=CALIBRATION_SCHEMA)


def calibration_summary(detections: pd.DataFrame, ground_truth: pd.DataFrame) -> tuple[dict, pa.Table]:
    """(summary dict, reliability table) of detections with columns image_id, class_id, cls_conf,
    loc_conf, x1..y2 against ground truth (GROUND_TRUTH_COLUMNS)."""
    detections = detections.reset_index(drop=True).assign(score=detections["cls_conf"].to_numpy()
                                                          * detections["loc_conf"].to_numpy())
    true_iou = match_true_iou(detections, ground_truth)
    loc, cls = detections["loc_conf"].to_numpy(float), detections["cls_conf"].to_numpy(float)

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    summary = {
        "n_detections": len(detections), "n_ground_truth": len(ground_truth),
        "n_matched": int((true_iou > 0).sum()), "n_matched_iou50": int((true_iou >= 0.5).sum()),
        "spearman_loc_conf_true_iou": clean(spearman(loc, true_iou)),
        "spearman_cls_conf_true_iou": clean(spearman(cls, true_iou)),
        "spearman_score_true_iou": clean(spearman(loc * cls, true_iou)),
        "mean_loc_conf": clean(float(loc.mean())) if len(loc) else None,
        "mean_true_iou": clean(float(true_iou.mean())) if len(loc) else None,
    }
    return summary, reliability_table(loc, true_iou, cls)


def calibrate_split(ec: EvalConfig, model_cfg: ModelConfig, weights_uri: str, labels_uri: str, manifest_uri: str,
                    split: str, class_names: list[str], max_pixels: int, min_score: float, table_uri: str,
                    summary_uri: str) -> dict:
    """Calibration of `weights_uri` on the labelled `split`; writes the reliability table (Parquet) and the
    summary (JSON); returns the summary. Detections kept: cls_conf x loc_conf >= min_score."""
    split_labels, items, _missing = labels.read_split(labels_uri, manifest_uri, split)
    detections, failed = detect_split(ec, model_cfg, weights_uri, items, len(class_names), max_pixels)
    detections = detections[detections["cls_conf"] * detections["loc_conf"] >= min_score]
    ground_truth = labels_to_ground_truth(split_labels)
    ground_truth = ground_truth[~ground_truth["image_id"].isin(failed)]
    summary, table = calibration_summary(detections, ground_truth)
    summary.update({"split": split, "n_images": len(items) - len(failed), "min_score": min_score})
    storage.write_table(table, table_uri)
    storage.write_text(summary_uri, json.dumps(summary, indent=2))
    return summary
