"""raylib.calibration: true IoU by greedy matching, Spearman correlations, reliability table.

Hand case (one image): ground truth class 0: A=(0,0,10,10), B=(20,0,30,10); class 1: C=(0,20,10,30).
  d1 class 0 (0,0,10,5)   cls 0.9 loc 0.85 score 0.765 -> A, IoU 50/100 = 0.5
  d2 class 0 (0,0,10,10)  cls 0.5 loc 0.92 score 0.46  -> A taken by d1 (higher score); B: no overlap -> 0
  d3 class 0 (20,0,28,10) cls 0.4 loc 0.75 score 0.30  -> B, IoU 80/100 = 0.8
  d4 class 1 (0,20,10,30) cls 0.6 loc 0.95 score 0.57  -> C, IoU 1.0
  d5 class 2 (0,0,10,10)  cls 0.3 loc 0.2  score 0.06  -> no class-2 ground truth -> 0
Spearman(loc, IoU): loc ranks d1..d5 = 3,4,2,5,1; IoU ranks = 3,1.5,4,5,1.5 (two zeros share 1.5);
centred products sum 0-1.5-1+4+3 = 4.5; sums of squares 10 and 9.5 -> 4.5/sqrt(95) = 0.46169.
Spearman(cls, IoU): cls ranks 5,3,2,4,1; centred 2,0,-1,1,-2; products 0+0-1+2+3 = 4 -> 4/sqrt(95) = 0.41039.
"""
import math

import numpy as np
import pandas as pd
import pytest

from raylib import calibration

GT = pd.DataFrame({"image_id": ["a"] * 3, "class_id": [0, 0, 1], "x1": [0.0, 20, 0], "y1": [0.0, 0, 20],
                   "x2": [10.0, 30, 10], "y2": [10.0, 10, 30], "difficult": [False] * 3})
DETS = pd.DataFrame({"image_id": ["a"] * 5, "class_id": [0, 0, 0, 1, 2],
                     "cls_conf": [0.9, 0.5, 0.4, 0.6, 0.3], "loc_conf": [0.85, 0.92, 0.75, 0.95, 0.2],
                     "x1": [0.0, 0, 20, 0, 0], "y1": [0.0, 0, 0, 20, 0], "x2": [10.0, 10, 28, 10, 10],
                     "y2": [5.0, 10, 10, 30, 10]})


def test_true_iou_greedy_by_score_same_class():
    dets = DETS.assign(score=DETS.cls_conf * DETS.loc_conf)
    np.testing.assert_allclose(calibration.match_true_iou(dets, GT), [0.5, 0.0, 0.8, 1.0, 0.0])
    # another image's ground truth is never matched
    other = dets.assign(image_id="b")
    np.testing.assert_allclose(calibration.match_true_iou(other, GT), np.zeros(5))


def test_correlations_and_reliability_table():
    summary, table = calibration.calibration_summary(DETS, GT)
    assert summary["spearman_loc_conf_true_iou"] == pytest.approx(4.5 / math.sqrt(95), abs=1e-4)
    assert summary["spearman_cls_conf_true_iou"] == pytest.approx(4 / math.sqrt(95), abs=1e-4)
    assert (summary["n_detections"], summary["n_matched"], summary["n_matched_iou50"]) == (5, 3, 3)
    rows = {round(r["bin_lo"], 1): r for r in table.to_pylist() if r["n"]}
    assert sorted(rows) == [0.2, 0.7, 0.8, 0.9]
    assert [rows[b]["n"] for b in (0.2, 0.7, 0.8, 0.9)] == [1, 1, 1, 2]
    assert [rows[b]["mean_true_iou"] for b in (0.2, 0.7, 0.8, 0.9)] == pytest.approx([0.0, 0.8, 0.5, 0.5])
    assert rows[0.9]["mean_loc_conf"] == pytest.approx(0.935)
    assert sum(r["n"] for r in table.to_pylist()) == 5 and table.num_rows == 10


def test_spearman_perfect_and_constant():
    assert calibration.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert calibration.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(calibration.spearman([1, 2, 3], [5, 5, 5]))


# ------------------------------------------------------- the vectorised matcher vs a straightforward loop


def _reference_true_iou(detections: pd.DataFrame, ground_truth: pd.DataFrame) -> np.ndarray:
    """The greedy rule one detection at a time (the loop `match_true_iou` had): per (image, class), by
    score, highest first, ties in row order; each takes the free box with the highest IoU (> 0; the first
    on a tie)."""
    box = ["x1", "y1", "x2", "y2"]
    true_iou = np.zeros(len(detections))
    gt_groups = {key: frame[box].to_numpy(float) for key, frame in ground_truth.groupby(["image_id", "class_id"])}
    for key, frame in detections.groupby(["image_id", "class_id"]):
        gt = gt_groups.get(key)
        if gt is None:
            continue
        order = np.argsort(-frame["score"].to_numpy(), kind="stable")
        free = np.ones(len(gt), dtype=bool)
        for row, det in zip(frame.index.to_numpy()[order], frame[box].to_numpy(float)[order]):
            w = np.clip(np.minimum(det[2], gt[:, 2]) - np.maximum(det[0], gt[:, 0]), 0, None)
            h = np.clip(np.minimum(det[3], gt[:, 3]) - np.maximum(det[1], gt[:, 1]), 0, None)
            union = (det[2] - det[0]) * (det[3] - det[1]) + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - w * h
            ious = np.where(union > 0, w * h / np.where(union > 0, union, 1), 0.0)
            candidates = np.where(free, ious, -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] > 0:
                true_iou[row] = candidates[j]
                free[j] = False
    return true_iou


def _tied_scene(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Boxes on a coarse grid (IoU ties, repeated boxes, boxes without area), 4 score values (rank ties),
    3 images x 2 classes, a fourth image without ground truth."""
    def frame(n: int, n_images: int) -> pd.DataFrame:
        x1, y1 = rng.integers(0, 4, n), rng.integers(0, 4, n)
        return pd.DataFrame({"image_id": rng.integers(0, n_images, n).astype(str), "class_id": rng.integers(0, 2, n),
                             "x1": x1 * 1.0, "y1": y1 * 1.0, "x2": x1 + rng.integers(0, 4, n) * 1.0,
                             "y2": y1 + rng.integers(0, 4, n) * 1.0})

    truth = frame(int(rng.integers(0, 20)), 3).assign(difficult=False)
    found = frame(int(rng.integers(1, 40)), 4)
    return found.assign(score=rng.choice([0.2, 0.5, 0.7, 0.9], len(found))), truth


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_true_iou_equals_the_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        found, truth = _tied_scene(rng)
        np.testing.assert_array_equal(calibration.match_true_iou(found, truth), _reference_true_iou(found, truth))
