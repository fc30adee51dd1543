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
    whose best match is a difficult box are left out)."""
    order = np.argsort(-detections["score"].to_numpy(dtype=np.float64), kind="stable")
    image_ids = detections["image_id"].to_numpy()[order]
    boxes = detections[BOX].to_numpy(dtype=np.float64)[order]
    objects = {image_id: (group[BOX].to_numpy(dtype=np.float64), group["difficult"].to_numpy(dtype=bool),
                          np.zeros(len(group), dtype=bool))  # matched already
               for image_id, group in ground_truth.groupby("image_id", sort=False)}
    flags: list[bool] = []
    for image_id, box in zip(image_ids, boxes):
        if image_id not in objects:
            flags.append(False)
            continue
        gt_boxes, difficult, matched = objects[image_id]
        overlaps = box_iou(box, gt_boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_threshold:
            flags.append(False)
        elif not difficult[best]:
            flags.append(not matched[best])  # a second detection of a found object is a duplicate
            matched[best] = True
    return np.asarray(flags, dtype=bool)


def average_precision(is_tp: np.ndarray, n_positive: int) -> float:
    """All-point interpolated AP (eq. 3.4-3.5) of ranked TP flags against `n_positive` objects."""
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(voc_ap(tp / n_positive, precision, use_07_metric=False))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box against [n, 4] boxes, continuous coordinates (no +1)."""
    inter_w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = inter_w * inter_h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def labels_to_ground_truth(labels: pa.Table) -> pd.DataFrame:
    """LABELS rows (image_id, objects) -> one ground-truth row per object; an image without objects
    gives no row (its detections are all false positives)."""
    image_ids, objects = labels.column("image_id").to_pylist(), labels.column("objects").to_pylist()
    rows = [{"image_id": image_id, **obj} for image_id, objs in zip(image_ids, objects) for obj in objs or []]
    return pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS).astype(
        {"class_id": np.int64, "x1": np.float64, "y1": np.float64, "x2": np.float64, "y2": np.float64,
         "difficult": bool})
