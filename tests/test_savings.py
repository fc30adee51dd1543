"""raylib.savings against numbers worked out by hand for a small fixture of curves (the arithmetic is in
the comments; t(0.975, 2) = 4.303 from a printed t table, sqrt(3) = 1.7320508)."""
from __future__ import annotations

import numpy as np
import pytest

from raylib.savings import RunCurve, common_counts, compare, markdown, seeds_needed, t975

# Three seeds of random and cls_iou. cls_iou's seed 1 labels 10, 30, 40 where every other run labels 10, 20,
# 30: the common counts are the union within the range all runs cover, [10, 30]: 10, 20, 30. cls_iou seed 1
# at 20 is interpolated: 0.10 + (0.40 - 0.10) x (20 - 10) / (30 - 10) = 0.25; its 40 is outside and dropped.
RANDOM = [RunCurve("random", 0, [10, 20, 30], [0.10, 0.20, 0.30]),
          RunCurve("random", 1, [10, 20, 30], [0.10, 0.30, 0.40]),
          RunCurve("random", 2, [10, 20, 30], [0.20, 0.20, 0.35])]
CLS_IOU = [RunCurve("cls_iou", 0, [10, 20, 30], [0.10, 0.25, 0.40]),
           RunCurve("cls_iou", 1, [10, 30, 40], [0.10, 0.40, 0.50]),
           RunCurve("cls_iou", 2, [10, 20, 30], [0.20, 0.30, 0.41])]


def test_common_counts_are_the_union_inside_the_shared_range():
    counts, interpolated = common_counts(RANDOM + CLS_IOU)
    assert counts.tolist() == [10, 20, 30] and interpolated
    assert not common_counts(RANDOM)[1]


def test_paired_differences_by_hand():
    # Differences per seed (cls_iou - random): at 10: 0, 0, 0; at 20: +0.05, -0.05, +0.10; at 30: +0.10, 0.00, +0.06.
    # At 20: mean 0.10 / 3 = 0.033333; deviations +0.016667, -0.083333, +0.066667; squares 0.00027778 +
    #   0.00694444 + 0.00444444 = 0.01166667; / 2 = 0.00583333; sd 0.0763763; half = 4.303 x 0.0763763 / 1.7320508
    #   = 4.303 x 0.0440959 = 0.189745.
    # At 30: mean 0.16 / 3 = 0.053333; deviations +0.046667, -0.053333, +0.006667; squares 0.00217778 + 0.00284444
    #   + 0.00004444 = 0.00506667; / 2 = 0.00253333; sd 0.0503322; half = 4.303 x 0.0290593 = 0.125042.
    p = compare(RANDOM + CLS_IOU).paired["cls_iou"]
    assert p.seeds == [0, 1, 2]
    assert p.diff_mean == pytest.approx([0.0, 0.033333, 0.053333], abs=1e-6)
    assert p.diff_sd == pytest.approx([0.0, 0.0763763, 0.0503322], abs=1e-6)
    assert p.diff_half == pytest.approx([0.0, 0.189745, 0.125042], abs=1e-5)
    assert p.ahead.tolist() == [0, 2, 2]


def test_area_ratio_by_hand():
    # Trapezoids at steps of 10: area = 10 (m10 + m20) / 2 + 10 (m20 + m30) / 2 = 5 (m10 + 2 m20 + m30).
    # random: 5 (0.1 + 0.4 + 0.3) = 4.0; 5 (0.1 + 0.6 + 0.4) = 5.5; 5 (0.2 + 0.4 + 0.35) = 4.75.
    # cls_iou: 5 (0.1 + 0.5 + 0.4) = 5.0; 5 (0.1 + 0.5 + 0.4) = 5.0; 5 (0.2 + 0.6 + 0.41) = 6.05.
    # Ratios 1.25, 0.909091, 1.273684; mean 3.432775 / 3 = 1.144258; deviations +0.105742, -0.235168, +0.129426;
    # squares 0.0111813 + 0.0553038 + 0.0167510 = 0.0832361; / 2 = 0.0416181; sd 0.204005;
    # half = 4.303 x 0.204005 / 1.7320508 = 4.303 x 0.117783 = 0.506818.
    p = compare(RANDOM + CLS_IOU).paired["cls_iou"]
    assert p.area_ratios == pytest.approx([1.25, 0.909091, 1.273684], abs=1e-6)
    assert p.area_ratio == pytest.approx(1.144258, abs=1e-6)
    assert p.area_half == pytest.approx(0.506818, abs=1e-5)


def test_labels_to_reach_by_hand():
    # Mean curves: random 0.133333, 0.233333, 0.35; cls_iou 0.133333, 0.266667, 0.403333. Best final: cls_iou's
    # 0.403333. Targets: 90% 0.363, 95% 0.383167, 97% 0.391233; cls_iou crosses them between 20 (0.266667) and
    # 30 (0.403333): 20 + 10 x (0.363 - 0.266667) / 0.136667 = 27.0488; 20 + 10 x 0.116500 / 0.136667 = 28.5244;
    # 20 + 10 x 0.124567 / 0.136667 = 29.1146. random ends at 0.35 < 0.363: never.
    savings = compare(RANDOM + CLS_IOU)
    assert savings.target_map == pytest.approx(0.403333, abs=1e-6)
    assert savings.to_reach["cls_iou"] == pytest.approx([27.0488, 28.5244, 29.1146], abs=1e-3)
    assert savings.to_reach["random"] == [None, None, None]
    # A take-all reference of 0.5 instead: 90% = 0.45 is reached by neither.
    assert compare(RANDOM + CLS_IOU, target_map=0.5).to_reach["cls_iou"] == [None, None, None]
    # A reference of 0.38: 90% = 0.342, random crosses between 20 (0.233333) and 30 (0.35):
    # 20 + 10 x (0.342 - 0.233333) / 0.116667 = 29.3143.
    assert compare(RANDOM + CLS_IOU, target_map=0.38).to_reach["random"][0] == pytest.approx(29.3143, abs=1e-3)


def test_verdict_and_multiplicity():
    # "better" = random + 0, +0.1, +0.1 on every seed: differences 0.1 with sd 0 at 20 and 30 (clear of zero).
    # Areas 5 (0.1 + 0.6 + 0.4) = 5.5, 5 (0.1 + 0.8 + 0.5) = 7.0, 5 (0.2 + 0.6 + 0.45) = 6.25; ratios 1.375,
    # 1.272727, 1.315789; mean 1.321172; deviations +0.053828, -0.048445, -0.005383; squares sum 0.0052734; / 2
    # = 0.0026367; sd 0.0513488; half 4.303 x 0.0296462 = 0.127567: the interval 1.19-1.45 is above 1.
    better = [RunCurve("better", c.seed, c.labelled, [c.map50[0], c.map50[1] + 0.1, c.map50[2] + 0.1]) for c in RANDOM]
    savings = compare(RANDOM + CLS_IOU + better)
    p = savings.paired["better"]
    assert p.area_ratio == pytest.approx(1.321172, abs=1e-6) and p.area_half == pytest.approx(0.127567, abs=1e-5)
    # 2 strategies x (3 counts + 1 area ratio) = 8 intervals; Bonferroni: 1 - 0.05 / 8 = 99.375%.
    assert savings.n_comparisons == 8
    text = markdown(savings)
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "**pays**" in lines["better vs random"] and "above zero at 20, 30 labels" in lines["better vs random"]
    assert "**cannot tell**" in lines["cls_iou vs random"]
    assert all("8 comparisons" in line and "99.38%" in line for line in lines.values())
    assert "interpolated linearly" in text


def test_no_random_says_what_to_add():
    text = markdown(compare(CLS_IOU))
    assert "add `strategy=random`" in text


def test_t_quantiles_and_seeds_needed():
    # Printed t table: t(0.975, 2) 4.303, 40: 2.021, 60: 2.000, 120: 1.980.
    assert t975(2) == 4.303
    assert t975(40) == pytest.approx(2.021, abs=5e-4)
    assert t975(60) == pytest.approx(2.000, abs=5e-4)
    assert t975(120) == pytest.approx(1.980, abs=5e-4)
    # (2.8 x 0.05 / 0.05)^2 = 7.84 -> 8 seeds; (2.8 x 0.05 / 0.02)^2 = 49 -> 49.
    assert seeds_needed(0.05, 0.05) == 8
    assert seeds_needed(0.05, 0.02) == 49
    assert np.isnan(compare(RANDOM[:1] + CLS_IOU[:1]).paired["cls_iou"].area_half)  # one seed: no interval
