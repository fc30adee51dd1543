"""VOC AP50 per class and mAP50 (seed 3.3, eq. 3.4-3.5): a pure function of two frames.

Definition (Pascal VOC 2010+, all-point interpolation), as `yolox.evaluators.voc_eval` computes it:
  * per class, detections are ranked by score (highest first; ties keep their input order);
  * a detection is a true positive when its best-overlapping ground-truth box of the same class in the
    same image has IoU >= 0.5 and was not matched before; a second detection of the same object is a
    false positive (duplicate);
  * `difficult` ground truth is ignored: a detection whose best match is a difficult box is neither TP
    nor FP, and difficult boxes don't count in recall (VOC's rule);
  * AP = sum_n (R_{n+1} - R_n) * P_interp(R_{n+1}), P_interp(R) = max_{R' >= R} P(R') (`voc_ap`);
  * mAP50 = the mean of AP over classes with at least one non-difficult ground-truth box. A class without
    one has AP `None` (undefined, JSON null) and is left out of the mean: 0 or 1 would be convention only.

Boxes are continuous pixel coordinates: IoU of (x2 - x1) * (y2 - y1) areas, without VOC's "+1 pixel"
(our boxes are floats end to end); at IoU 0.5 that is immaterial above a few pixels. The score that ranks
a detection is objectness x class probability, as YOLOX ranks them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from yolox.evaluators.voc_eval import voc_ap

from raylib.schemas import BOX as BOX_COLUMNS

IOU_THRESHOLD = 0.5
BOX = list(BOX_COLUMNS)
DETECTION_COLUMNS = ["image_id", "class_id", "score", *BOX]
GROUND_TRUTH_COLUMNS = ["image_id", "class_id", *BOX, "difficult"]


def ap50_per_class(detections: pd.DataFrame, ground_truth: pd.DataFrame, num_classes: int,
                   iou_threshold: float = IOU_THRESHOLD) -> dict:
    """detections: DETECTION_COLUMNS, one row per detection; ground_truth: GROUND_TRUTH_COLUMNS, one row
    per object. Returns {"ap50": [AP or None per class], "map50": float (NaN if no class has ground
    truth), "n_gt": [non-difficult ground-truth boxes per class]}."""
    for frame, columns, what in ((detections, DETECTION_COLUMNS, "detections"),
                                 (ground_truth, GROUND_TRUTH_COLUMNS, "ground_truth")):
        if missing := [c for c in columns if c not in frame.columns]:
            raise ValueError(f"{what}: missing column(s) {missing}; expected {columns}")
    bad = ground_truth[(ground_truth["class_id"] < 0) | (ground_truth["class_id"] >= num_classes)]
    if len(bad):
        raise ValueError(f"ground truth has class ids outside [0, {num_classes}): {sorted(set(bad['class_id']))[:5]}")
    ap50: list[float | None] = []
    n_gt: list[int] = []
    for class_id in range(num_classes):
        gt = ground_truth[ground_truth["class_id"] == class_id]
        n_positive = int((~gt["difficult"].astype(bool)).sum())
        n_gt.append(n_positive)
        if n_positive == 0:
            ap50.append(None)
            continue
        is_tp = match_detections(detections[detections["class_id"] == class_id], gt, iou_threshold)
        ap50.append(average_precision(is_tp, n_positive))
    defined = [ap for ap in ap50 if ap is not None]
    return {"ap50": ap50, "map50": float(np.mean(defined)) if defined else math.nan, "n_gt": n_gt}


def match_detections(detections: pd.DataFrame, ground_truth: pd.DataFrame,
                     iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Greedy VOC matching of one class: a TP flag per counted detection, in rank order (detections
    whose best match is a difficult box are left out).

    A detection's best match is the box of its image with the highest IoU (the first in ground-truth
    order on a tie), matched before or not, so the greedy pass needs no loop: a detection is a TP when
    that IoU reaches the threshold, the box is not difficult and no higher-ranked detection has the same
    best box (a second detection of a found object is a duplicate)."""
    order = np.argsort(-detections["score"].to_numpy(dtype=np.float64), kind="stable")
    best, best_iou = best_matches(detections["image_id"].to_numpy()[order],
                                  detections[BOX].to_numpy(dtype=np.float64)[order],
                                  ground_truth["image_id"].to_numpy(), ground_truth[BOX].to_numpy(dtype=np.float64))
    difficult = np.append(ground_truth["difficult"].to_numpy(dtype=bool), False)[best]  # best -1: no box
    found = best_iou >= iou_threshold
    hits = np.flatnonzero(found & ~difficult)
    _, first = np.unique(best[hits], return_index=True)  # the highest-ranked detection of each box
    is_tp = np.zeros(len(order), dtype=bool)
    is_tp[hits[first]] = True
    return is_tp[~(found & difficult)]


def best_matches(image_ids: np.ndarray, boxes: np.ndarray, gt_image_ids: np.ndarray,
                 gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `boxes` [n, 4], the index of the box of `gt_boxes` [m, 4] in the same image with the
    highest IoU (the first on a tie; -1 where its image has none) and that IoU (-inf where none)."""
    box_of, gt_of, starts = pairs_by_group(image_ids, gt_image_ids)
    best_iou, pair = segment_max(pair_iou(boxes[box_of], gt_boxes[gt_of]), starts)
    best = np.full(len(boxes), -1)
    best[pair >= 0] = gt_of[pair[pair >= 0]]
    return best, best_iou


def segment_max(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maximum of each segment values[starts[i]:starts[i + 1]] and the position in `values` of its first
    occurrence, as np.max and np.argmax give them; -inf and -1 for an empty segment."""
    n = len(starts) - 1
    best, position = np.full(n, -np.inf), np.full(n, -1)
    filled = np.flatnonzero(np.diff(starts))
    if len(filled):
        best[filled] = np.maximum.reduceat(values, starts[filled])
        at_max = (values == np.repeat(best, np.diff(starts))) | np.isnan(values)  # a NaN: np.argmax's pick too
        position[filled] = np.minimum.reduceat(np.where(at_max, np.arange(len(values)), len(values)), starts[filled])
    return best, position


def pairs_by_group(groups: np.ndarray, gt_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (box, ground-truth box) pair of the same group (e.g. image), as index arrays grouped by box in
    box order, ground truth in its own order within a box; and `starts` [n + 1]: box i's pairs are
    starts[i]:starts[i + 1]. Memory: one entry per pair (boxes x ground truth per group)."""
    codes, _ = pd.factorize(np.concatenate([gt_groups, groups]))
    gt_code, code = codes[:len(gt_groups)], codes[len(gt_groups):]
    gt_order = np.argsort(gt_code, kind="stable")  # ground truth by group, each group in its own order
    first_gt = np.searchsorted(gt_code[gt_order], code)
    counts = np.bincount(gt_code, minlength=codes.max(initial=-1) + 1)[code]
    starts = np.concatenate([[0], np.cumsum(counts)])
    box_of = np.repeat(np.arange(len(groups)), counts)
    within = np.arange(starts[-1]) - starts[:-1][box_of]  # position among its box's pairs
    return box_of, gt_order[first_gt[box_of] + within], starts


def average_precision(is_tp: np.ndarray, n_positive: int) -> float:
    """All-point interpolated AP (eq. 3.4-3.5) of ranked TP flags against `n_positive` objects."""
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(voc_ap(tp / n_positive, precision, use_07_metric=False))


def pair_iou(boxes: np.ndarray, other: np.ndarray) -> np.ndarray:
    """IoU of each x1y1x2y2 box of `boxes` [n, 4] with the box in the same row of `other` [n, 4],
    continuous coordinates (no +1)."""
    inter_w = np.clip(np.minimum(other[:, 2], boxes[:, 2]) - np.maximum(other[:, 0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(other[:, 3], boxes[:, 3]) - np.maximum(other[:, 1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    union = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
             + (other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1]) - inter)
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def labels_to_ground_truth(labels: pa.Table) -> pd.DataFrame:
    """LABELS rows (image_id, objects) -> one ground-truth row per object, built from the Arrow columns; an
    image without objects gives no row (its detections are all false positives)."""
    objects = labels.column("objects").combine_chunks()
    flat = pc.list_flatten(objects)
    columns = {"image_id": labels.column("image_id").take(pc.list_parent_indices(objects)),
               **{name: pc.struct_field(flat, name) for name in GROUND_TRUTH_COLUMNS[1:]}}
    return pd.DataFrame({name: column.to_numpy(zero_copy_only=False) for name, column in columns.items()},
                        columns=GROUND_TRUTH_COLUMNS).astype(
        {"class_id": np.int64, "x1": np.float64, "y1": np.float64, "x2": np.float64, "y2": np.float64,
         "difficult": bool})
