"""VOC AP50: expected values come from the seed's worked example (figure 3.3) and hand computation."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raylib import schemas, storage
from raylib.config import Config, ModelConfig
from raylib.evaluate import ap50_per_class, evaluate_split, labels_to_ground_truth
from raylib.model import build_model, save_weights


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
    obj = {"class_id": 1, "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "difficult": True}
    labels = schemas.check(pa.table({
        "image_id": ["a", "b"], "split": ["test", "test"], "round_added": pa.array([0, 0], pa.int16()),
        "objects": pa.array([[obj, {**obj, "class_id": 0, "difficult": False}], []], pa.list_(schemas.OBJECT)),
    }), schemas.LABELS, "labels")
    frame = labels_to_ground_truth(labels)
    assert frame["image_id"].tolist() == ["a", "a"]  # the background image has no rows
    assert frame["class_id"].tolist() == [1, 0] and frame["difficult"].tolist() == [True, False]
    assert frame[["x1", "y1", "x2", "y2"]].iloc[0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_evaluate_split_writes_metrics_and_counts_undecodable_images(tmp_path):
    ids, uris, objects = [], [], []
    for i in range(3):
        image = np.full((64, 80, 3), 90, np.uint8)
        cv2.rectangle(image, (10, 10), (40, 50), (0, 0, 255), -1)
        uri = str(tmp_path / f"im{i}.jpg")
        cv2.imwrite(uri, image)
        ids.append(f"im{i}")
        uris.append(uri)
        objects.append([{"class_id": 0, "x1": 10.0, "y1": 10.0, "x2": 40.0, "y2": 50.0, "difficult": False}])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ids.append("broken")
    uris.append(str(tmp_path / "broken.jpg"))
    objects.append([{"class_id": 1, "x1": 1.0, "y1": 1.0, "x2": 9.0, "y2": 9.0, "difficult": False}])
    storage.write_table(pa.table({"image_id": ids, "uri": uris}), str(tmp_path / "pool.parquet"))
    labels = pa.table({"image_id": ids + ["other"], "split": ["test"] * 4 + ["train"],
                       "round_added": pa.array([0] * 5, pa.int16()),
                       "objects": pa.array(objects + [[]], pa.list_(schemas.OBJECT))})
    storage.write_table(schemas.check(labels, schemas.LABELS, "labels"), str(tmp_path / "labels.parquet"))
    save_weights(build_model("nano", 2), str(tmp_path / "model.pt"), "nano", ["red", "blue"])

    cfg = Config(model=ModelConfig(size="nano", input_size=64))
    out = str(tmp_path / "metrics.json")
    metrics = evaluate_split(cfg, str(tmp_path / "model.pt"), str(tmp_path / "labels.parquet"),
                             str(tmp_path / "pool.parquet"), "test", out, ["red", "blue"])
    assert json.loads(storage.read_text(out)) == metrics
    assert metrics["split"] == "test" and metrics["weights"] == str(tmp_path / "model.pt")
    assert metrics["n_images"] == 3 and metrics["n_failed"] == 1 and metrics["failed_images"] == ["broken"]
    # The broken image's object is left out with it: "blue" has no ground truth left -> undefined.
    assert metrics["n_gt_per_class"] == {"red": 3, "blue": 0}
    assert metrics["ap50_per_class"]["blue"] is None
    assert 0.0 <= metrics["ap50_per_class"]["red"] <= 1.0 and metrics["map50"] == metrics["ap50_per_class"]["red"]
