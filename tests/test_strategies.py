"""Each strategy ranks the uncertain detection below the certain one (lower score = select first)."""
from __future__ import annotations

import numpy as np
import pytest

from raylib.strategies import detection_scores, selection_min_score

CERTAIN = {"cls": 0.95, "loc": 0.9, "probs": [0.95, 0.02, 0.01]}
UNSURE = {"cls": 0.4, "loc": 0.5, "probs": [0.4, 0.38, 0.35]}


def _scores(name: str) -> np.ndarray:
    cls_conf = np.array([CERTAIN["cls"], UNSURE["cls"]])
    loc_conf = np.array([CERTAIN["loc"], UNSURE["loc"]])
    probs = np.array([CERTAIN["probs"], UNSURE["probs"]])
    return detection_scores(name, cls_conf, loc_conf, probs, ["a", "b"], seed=0)


@pytest.mark.parametrize("name", ["cls_iou", "cls_only", "loc_only", "margin", "entropy"])
def test_uncertain_detection_scores_lower(name):
    certain, unsure = _scores(name)
    assert unsure < certain


def test_values_follow_their_definitions():
    assert _scores("cls_iou") == pytest.approx([0.95 * 0.9, 0.4 * 0.5])
    assert _scores("margin") == pytest.approx([0.93, 0.02])
    uniform = detection_scores("entropy", np.array([0.5]), np.array([1.0]), np.array([[0.5, 0.5, 0.5]]))
    one_hot = detection_scores("entropy", np.array([0.9]), np.array([1.0]), np.array([[1.0, 0.0, 0.0]]))
    assert uniform == pytest.approx([0.0], abs=1e-6) and one_hot == pytest.approx([1.0], abs=1e-6)


def test_random_is_deterministic_per_seed_and_uniform():
    ids = [f"img{i // 3}" for i in range(30000)]
    ones = np.ones(len(ids))
    first = detection_scores("random", ones, ones, None, ids, seed=1)
    assert np.array_equal(first, detection_scores("random", ones, ones, None, ids, seed=1))
    assert not np.array_equal(first, detection_scores("random", ones, ones, None, ids, seed=2))
    assert 0 < first.min() and first.max() < 1
    assert np.histogram(first, bins=10, range=(0, 1))[0] == pytest.approx([3000] * 10, rel=0.1)


def test_missing_inputs_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="class probabilities"):
        detection_scores("entropy", np.ones(1), np.ones(1), None)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        detection_scores("nope", np.ones(1), np.ones(1))


def test_selection_floor_applies_to_confidences_only():
    assert selection_min_score("cls_iou", 0.2) == 0.2
    assert selection_min_score("margin", 0.2) == float("-inf")


def test_random_value_of_a_detection_does_not_depend_on_its_batch():
    ids = np.array(["a", "b", "a", "c", "b", "a"], dtype=object)
    ones = np.ones(len(ids))
    whole = detection_scores("random", ones, ones, None, ids, seed=3)
    # The rows of image "a" alone, in their own order, get the same values as inside the mixed batch.
    only_a = detection_scores("random", ones[:3], ones[:3], None, ["a", "a", "a"], seed=3)
    assert np.array_equal(whole[ids == "a"], only_a)
    assert len(set(whole.tolist())) == len(ids)  # the index within the image matters


@pytest.mark.parametrize("name", ["cls_iou", "cls_only", "loc_only", "margin", "entropy", "random"])
def test_no_detections_give_no_scores(name):
    empty = np.empty(0, dtype=np.float32)
    scores = detection_scores(name, empty, empty, np.empty((0, 0), np.float32), [], seed=0)
    assert scores.shape == (0,) and scores.dtype == np.float32
