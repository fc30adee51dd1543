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
