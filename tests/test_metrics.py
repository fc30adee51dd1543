"""VOC AP50: expected values from the seed's worked example (figure 3.3), hand computation, and parity
with the reference implementation, `yolox.evaluators.voc_eval.voc_eval`, on generated scenes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from yolox.evaluators.voc_eval import voc_eval

from raylib.metrics import BOX, ap50_per_class, labels_to_ground_truth, match_detections
from tests.helpers import labels_table, obj


def dets(rows: list[tuple]) -> pd.DataFrame:
    """rows: (image_id, class_id, score, x1, y1, x2, y2)."""
    return pd.DataFrame(rows, columns=["image_id", "class_id", "score", "x1", "y1", "x2", "y2"])


def gts(rows: list[tuple]) -> pd.DataFrame:
    """rows: (image_id, class_id, x1, y1, x2, y2[, difficult])."""
    rows = [row if len(row) == 7 else (*row, False) for row in rows]
    return pd.DataFrame(rows, columns=["image_id", "class_id", "x1", "y1", "x2", "y2", "difficult"])


def box(i: int) -> tuple[float, float, float, float]:
    """The i-th of a row of disjoint 20x20 boxes."""
    return (40.0 * i, 10.0, 40.0 * i + 20, 30.0)


def test_seed_figure_3_3_table():
    """24 detections, 15 objects, TP/FP in the table's order -> AP 0.2457 (the seed's eq. 3.5 result:
    1/15 * 1 + 1/15 * 2/3 + 4/15 * 6/14 + 1/15 * 7/23)."""
    confidences = [95, 94.9, 91, 88, 84, 80, 78, 74, 71, 70, 67, 62, 54, 48, 45, 44.9, 44, 43.9, 43, 38, 35, 23,
                   18, 14]  # the table's ties (95/95, 45/45, 44/44) split so the order is not up to a sort
    is_tp = [1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert len(confidences) == 24 and sum(is_tp) == 7
    truth = gts([(f"img{i // 5}", 0, *box(i % 5)) for i in range(15)])  # 15 objects over 3 images
    rows, next_object, first_object = [], 0, None
    for k, (confidence, tp) in enumerate(zip(confidences, is_tp)):
        image, position = f"img{next_object // 5}", next_object % 5
        if tp:
            rows.append((image, 0, confidence / 100, *box(position)))
            first_object = first_object or (image, position)
            next_object += 1
        elif k % 3 == 0 and first_object:  # a duplicate of an object found earlier
            rows.append((first_object[0], 0, confidence / 100, *box(first_object[1])))
        elif k % 3 == 1:  # poor localisation: IoU 1/3 with an object
            x1, y1, x2, y2 = box(position)
            rows.append((image, 0, confidence / 100, x1 + 10, y1, x2 + 10, y2))
        else:  # background
            rows.append((f"img{k % 4}", 0, confidence / 100, 0.0, 100.0, 20.0, 120.0))
    shuffled = dets(rows).sample(frac=1.0, random_state=0)  # ranking must come from the scores
    result = ap50_per_class(shuffled, truth, num_classes=1)
    assert result["ap50"][0] == pytest.approx(0.2457, abs=5e-5)
    assert result["map50"] == pytest.approx(0.2457, abs=5e-5)
    assert result["n_gt"] == [15]


def test_perfect_detections_give_one():
    truth = gts([("a", 0, *box(0)), ("a", 1, *box(1)), ("b", 1, *box(2)), ("c", 0, *box(3))])
    found = dets([(image, c, 0.9, x1, y1, x2, y2) for image, c, x1, y1, x2, y2, _ in truth.itertuples(index=False)])
    result = ap50_per_class(found, truth, num_classes=2)
    assert result["ap50"] == [1.0, 1.0] and result["map50"] == 1.0 and result["n_gt"] == [2, 2]


def test_duplicate_detection_is_false_positive():
    # ranks: a (TP), a again (FP), b (TP) -> P/R: (1, .5), (.5, .5), (2/3, 1) -> AP = .5 * 1 + .5 * 2/3
    truth = gts([("x", 0, *box(0)), ("x", 0, *box(1))])
    found = dets([("x", 0, 0.9, *box(0)), ("x", 0, 0.8, *box(0)), ("x", 0, 0.7, *box(1))])
    assert ap50_per_class(found, truth, 1)["ap50"][0] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_difficult_ground_truth_is_ignored():
    truth = gts([("x", 0, *box(0), False), ("x", 0, *box(1), True)])
    # A detection of the difficult object ranked first is neither TP nor FP ...
    both = dets([("x", 0, 0.9, *box(1)), ("x", 0, 0.8, *box(0))])
    result = ap50_per_class(both, truth, 1)
    assert result["ap50"][0] == pytest.approx(1.0) and result["n_gt"] == [1]
    # ... and missing the difficult object costs no recall.
    assert ap50_per_class(dets([("x", 0, 0.8, *box(0))]), truth, 1)["ap50"][0] == pytest.approx(1.0)


def test_class_without_ground_truth_is_undefined_and_left_out_of_map():
    truth = gts([("x", 0, *box(0)), ("x", 1, *box(1))])
    found = dets([("x", 0, 0.9, *box(0)), ("x", 2, 0.9, *box(2))])  # class 2 has detections, no truth
    result = ap50_per_class(found, truth, num_classes=3)
    assert result["ap50"][0] == 1.0 and result["ap50"][1] == 0.0 and result["ap50"][2] is None
    assert result["n_gt"] == [1, 1, 0]
    assert result["map50"] == pytest.approx(0.5)  # mean of the classes with ground truth only
    assert math.isnan(ap50_per_class(found, gts([]), num_classes=3)["map50"])


def test_wrong_class_is_false_positive():
    truth = gts([("x", 0, *box(0)), ("x", 1, *box(1))])
    # class 1 ranks a detection on the class-0 object first (FP), then its own object (TP): AP 0.5
    found = dets([("x", 1, 0.9, *box(0)), ("x", 1, 0.8, *box(1)), ("x", 0, 0.7, *box(0))])
    assert ap50_per_class(found, truth, 2)["ap50"] == [1.0, pytest.approx(0.5)]


def test_detection_in_another_image_is_false_positive():
    truth = gts([("x", 0, *box(0))])
    found = dets([("y", 0, 0.9, *box(0)), ("x", 0, 0.8, *box(0))])
    assert ap50_per_class(found, truth, 1)["ap50"][0] == pytest.approx(0.5)


def test_iou_threshold_is_inclusive_at_one_half():
    truth = gts([("x", 0, 0.0, 0.0, 10.0, 10.0)])
    assert ap50_per_class(dets([("x", 0, 0.9, 0.0, 0.0, 10.0, 5.0)]), truth, 1)["ap50"][0] == 1.0  # IoU 0.5
    assert ap50_per_class(dets([("x", 0, 0.9, 0.0, 0.0, 10.0, 4.9)]), truth, 1)["ap50"][0] == 0.0  # 0.49


def test_empty_detections_give_zero():
    truth = gts([("x", 0, *box(0)), ("x", 1, *box(1))])
    result = ap50_per_class(dets([]), truth, 2)
    assert result["ap50"] == [0.0, 0.0] and result["map50"] == 0.0


def test_labels_to_ground_truth_flattens_objects():
    labels = labels_table([("a", "test", [obj(1, 1, 2, 3, 4, difficult=True), obj(0, 1, 2, 3, 4)]), ("b", "test", [])])
    frame = labels_to_ground_truth(labels)
    assert frame["image_id"].tolist() == ["a", "a"]  # the background image has no rows
    assert frame["class_id"].tolist() == [1, 0] and frame["difficult"].tolist() == [True, False]
    assert frame[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [1.0, 2.0, 3.0, 4.0]


# ------------------------------------------------------------------ parity with yolox's voc_eval


def _iou(a, b, plus_one: float) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + plus_one, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + plus_one, 0.0)
    inter = iw * ih
    area = (a[2] - a[0] + plus_one) * (a[3] - a[1] + plus_one) + (b[2] - b[0] + plus_one) * (b[3] - b[1] + plus_one)
    return inter / (area - inter)


def _scene(rng: np.random.Generator, n_images: int, n_classes: int):
    """Integer ground truth on a grid (objects don't overlap), detections that are clear hits (jittered
    copies, sometimes twice), clear misses or wrong-class; any detection whose IoU with a same-class
    object is near 0.5 under either box convention (continuous or VOC's +1) is dropped, so both
    implementations must agree exactly."""
    truth, found = [], []
    for i in range(n_images):
        image = f"img{i:03d}"
        objects = []
        for cell in rng.choice(16, size=int(rng.integers(0, 6)), replace=False):
            x, y = 60 * (cell % 4), 60 * (cell // 4)
            box = (x + int(rng.integers(0, 10)), y + int(rng.integers(0, 10)), x + int(rng.integers(30, 50)),
                   y + int(rng.integers(30, 50)))
            objects.append((int(rng.integers(0, n_classes)), box, bool(rng.random() < 0.15)))
        truth += [(image, c, *box, difficult) for c, box, difficult in objects]
        for c, box, _ in objects:
            for _ in range(int(rng.choice([0, 1, 1, 2]))):  # missed, found, found twice
                jitter = rng.integers(-3, 4, size=4)
                found.append((image, c if rng.random() < 0.9 else (c + 1) % n_classes, *(np.add(box, jitter))))
        for _ in range(int(rng.integers(0, 3))):  # background
            x, y = int(rng.integers(0, 200)), int(rng.integers(0, 200))
            found.append((image, int(rng.integers(0, n_classes)), x, y, x + 25, y + 25))
    kept = []
    for image, c, *box in found:
        same = [b[2:6] for b in truth if b[0] == image and b[1] == c]
        if all(abs(_iou(box, g, p) - 0.5) > 0.1 for g in same for p in (0.0, 1.0)):
            kept.append((image, c, *box))
    scores = rng.permutation(len(kept)) / len(kept) + 0.001  # distinct: no tie left to a sort
    return gts(truth), dets([(image, c, float(s), *map(float, box)) for (image, c, *box), s in zip(kept, scores)])


def _voc_eval_ap(tmp_path, truth: pd.DataFrame, found: pd.DataFrame, n_images: int, class_id: int) -> float:
    annotations = tmp_path / "Annotations"
    annotations.mkdir(exist_ok=True)
    names = [f"img{i:03d}" for i in range(n_images)]
    for name in names:
        objects = "".join(
            f"<object><name>c{row.class_id}</name><pose>x</pose><truncated>0</truncated>"
            f"<difficult>{int(row.difficult)}</difficult><bndbox><xmin>{int(row.x1)}</xmin><ymin>{int(row.y1)}"
            f"</ymin><xmax>{int(row.x2)}</xmax><ymax>{int(row.y2)}</ymax></bndbox></object>"
            for row in truth[truth.image_id == name].itertuples())
        (annotations / f"{name}.xml").write_text(f"<annotation>{objects}</annotation>")
    (tmp_path / "set.txt").write_text("\n".join(names) + "\n")
    rows = found[found.class_id == class_id]
    (tmp_path / f"det_c{class_id}.txt").write_text("".join(
        f"{r.image_id} {r.score} {r.x1} {r.y1} {r.x2} {r.y2}\n" for r in rows.itertuples()))
    _, _, ap = voc_eval(str(tmp_path / "det_{}.txt"), str(annotations / "{}.xml"), str(tmp_path / "set.txt"),
                        f"c{class_id}", str(tmp_path / "cache"), ovthresh=0.5, use_07_metric=False)
    return float(ap)


@pytest.mark.parametrize("seed", range(4))
def test_ap_matches_yolox_voc_eval_on_generated_scenes(tmp_path, seed):
    n_images, n_classes = 25, 3
    truth, found = _scene(np.random.default_rng(seed), n_images, n_classes)
    ours = ap50_per_class(found, truth, n_classes)
    assert len(found) > 20 and sum(ours["n_gt"]) > 10
    for class_id in range(n_classes):
        if ours["n_gt"][class_id] == 0:
            continue  # voc_eval divides by zero objects; ours says undefined
        reference = _voc_eval_ap(tmp_path, truth, found, n_images, class_id)
        assert ours["ap50"][class_id] == pytest.approx(reference, abs=1e-12), class_id



# ------------------------------------------------------- the vectorised matcher vs a straightforward loop


def _reference_match(detections: pd.DataFrame, ground_truth: pd.DataFrame, iou_threshold: float = 0.5) -> np.ndarray:
    """The VOC rule one detection at a time (the loop `match_detections` had): by score, highest first,
    ties in row order; each takes its image's best box (first on a tie)."""
    order = np.argsort(-detections["score"].to_numpy(dtype=np.float64), kind="stable")
    objects = {image_id: (group[BOX].to_numpy(dtype=np.float64), group["difficult"].to_numpy(dtype=bool),
                          np.zeros(len(group), dtype=bool))
               for image_id, group in ground_truth.groupby("image_id", sort=False)}
    flags = []
    for image_id, box in zip(detections["image_id"].to_numpy()[order], detections[BOX].to_numpy(dtype=np.float64)[order]):
        if image_id not in objects:
            flags.append(False)
            continue
        gt_boxes, difficult, matched = objects[image_id]
        overlaps = [_iou(box, gt, 0.0) if _union(box, gt) > 0 else 0.0 for gt in gt_boxes]
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_threshold:
            flags.append(False)
        elif not difficult[best]:
            flags.append(not matched[best])
            matched[best] = True
    return np.asarray(flags, dtype=bool)


def _union(a, b) -> float:
    return (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - _intersection(a, b)


def _intersection(a, b) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)


def _tied_scene(rng: np.random.Generator, n_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One class on a coarse grid: boxes repeat (IoU ties, IoU exactly 0.5 and 1), scores take 4 values
    (rank ties), some boxes are difficult, some images have no ground truth, some boxes have no area."""
    def boxes(n: int) -> np.ndarray:
        x1, y1 = rng.integers(0, 4, n), rng.integers(0, 4, n)
        return np.stack([x1, y1, x1 + rng.integers(0, 4, n), y1 + rng.integers(0, 4, n)], axis=1).astype(float)

    n_gt, n_found = int(rng.integers(0, 25)), int(rng.integers(0, 40))
    truth = pd.DataFrame(boxes(n_gt), columns=BOX).assign(
        image_id=rng.integers(0, n_images, n_gt).astype(str), class_id=0, difficult=rng.random(n_gt) < 0.2)
    found = pd.DataFrame(boxes(n_found), columns=BOX).assign(
        image_id=rng.integers(0, n_images + 1, n_found).astype(str), class_id=0,
        score=rng.choice([0.2, 0.5, 0.7, 0.9], n_found))
    return found, truth


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_matching_equals_the_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        found, truth = _tied_scene(rng, n_images=int(rng.integers(1, 5)))
        threshold = float(rng.choice([0.5, 0.25, 0.0]))
        expected = _reference_match(found, truth, threshold)
        np.testing.assert_array_equal(match_detections(found, truth, threshold), expected)
