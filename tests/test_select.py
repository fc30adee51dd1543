"""Selection equals a plain reading of pseudo-code 2, in memory and streamed over Parquet files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raylib import schemas, storage
from raylib.config import StrategyConfig
from raylib.paths import RoundPaths
from raylib.select import apply_budget, class_thresholds, select_per_class, select_round
from tests.helpers import write_detection_parts


def reference_pseudo_code_2(detections: pd.DataFrame, k: int, min_score: float) -> set[tuple[str, int]]:
    """Pseudo-code 2, written as plainly as possible: (image, class) pairs selected."""
    selected = set()
    rows = list(detections.itertuples(index=False))
    for c in sorted({r.class_id for r in rows}):
        saved = sorted(r.score for r in rows if r.class_id == c and r.score > min_score)
        if not saved:
            continue
        threshold = saved[min(k, len(saved)) - 1]  # the k-th lowest, or the highest if fewer than k
        for r in rows:
            if r.class_id == c and min_score < r.score <= threshold:
                selected.add((r.image_id, int(c)))
    return selected


def random_detections(seed: int, n: int, n_images: int = 80, n_classes: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = rng.random(n).astype(np.float32)
    scores[rng.random(n) < 0.1] = np.float32(0.5)  # plenty of exact ties
    classes = rng.integers(0, n_classes, n)
    classes[(classes == 3) & (scores > 0.2)] = 4  # class 3 has nothing above min_score
    return pd.DataFrame({"image_id": [f"img{i:03d}" for i in rng.integers(0, n_images, n)],
                         "class_id": classes.astype(np.int16), "score": scores})


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", [1, 7, 100])
def test_select_per_class_matches_the_reference(seed, k):
    detections = random_detections(seed, n=400)
    got = select_per_class(detections, k=k, min_score=0.2)
    assert set(zip(got["image_id"], got["class_id"].astype(int))) == reference_pseudo_code_2(detections, k, 0.2)
    assert (got["score"] > 0.2).all()
    assert 3 not in set(got["class_id"])


def test_rank_is_by_score_then_image_id():
    detections = pd.DataFrame({"image_id": ["b", "a", "c", "a"], "class_id": [0, 0, 0, 0],
                               "score": [0.3, 0.3, 0.25, 0.9]})
    got = select_per_class(detections, k=3, min_score=0.2)
    assert got["image_id"].tolist() == ["c", "a", "b"] and got["rank"].tolist() == [0, 1, 2]


def test_budget_keeps_the_lowest_scoring_images():
    detections = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "class_id": [0, 0, 1, 1],
                               "score": [0.5, 0.3, 0.4, 0.25]})
    got = apply_budget(select_per_class(detections, k=10, min_score=0.2), budget=2)
    assert set(got["image_id"]) == {"b", "d"}




@pytest.mark.parametrize("seed", range(4))
def test_streamed_selection_equals_in_memory_selection(tmp_path, seed):
    detections = random_detections(seed, n=3000)
    write_detection_parts(detections, str(tmp_path / "detections"), parts=7)
    rp = RoundPaths(str(tmp_path / "run"), 2)
    summary = select_round(str(tmp_path / "detections"), StrategyConfig(k=25, min_score=0.2), 2, rp, num_classes=5)
    streamed = schemas.check(storage.read_table(rp.selection), schemas.SELECTION, "selection").to_pandas()
    expected = select_per_class(detections, k=25, min_score=0.2)
    pd.testing.assert_frame_equal(streamed.drop(columns="round").reset_index(drop=True), expected,
                                  check_dtype=False)
    assert (streamed["round"] == 2).all()
    thresholds = storage.read_table(rp.thresholds).to_pandas().set_index("class_id")
    assert np.isnan(thresholds.loc[3, "threshold"]) and thresholds.loc[3, "n_candidates"] == 0
    for c in (0, 1, 2, 4):
        above = np.sort(detections[(detections.class_id == c) & (detections.score > 0.2)]["score"].to_numpy())
        assert thresholds.loc[c, "threshold"] == pytest.approx(above[min(25, len(above)) - 1])
        assert thresholds.loc[c, "n_candidates"] == len(above)
    assert summary.n_images == expected["image_id"].nunique()


def test_streamed_selection_is_deterministic_and_handles_no_detections(tmp_path):
    write_detection_parts(random_detections(1, n=0), str(tmp_path / "empty"), parts=1)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    summary = select_round(str(tmp_path / "empty"), StrategyConfig(), 0, rp, num_classes=3)
    assert summary.n_images == 0 and storage.read_table(rp.selection).num_rows == 0
    detections = random_detections(5, n=2000)
    write_detection_parts(detections, str(tmp_path / "d"), parts=3)
    select_round(str(tmp_path / "d"), StrategyConfig(k=10, budget=7), 0, rp, num_classes=5)
    first = storage.read_table(rp.selection)
    select_round(str(tmp_path / "d"), StrategyConfig(k=10, budget=7), 0, rp, num_classes=5)
    assert storage.read_table(rp.selection).equals(first)
    assert len(set(first.column("image_id").to_pylist())) == 7


def test_every_row_tied_at_the_threshold_is_selected_across_files(tmp_path):
    """k=3, but five images tie at the 3rd lowest score, in different files: all five are selected."""
    detections = pd.DataFrame({
        "image_id": ["a", "b", "t1", "t2", "t3", "t4", "t5", "hi"],
        "class_id": np.zeros(8, np.int16),
        "score": np.array([0.3, 0.35, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9], np.float32),
    })
    write_detection_parts(detections.sample(frac=1.0, random_state=0), str(tmp_path / "d"), parts=4)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    select_round(str(tmp_path / "d"), StrategyConfig(k=3, min_score=0.2), 0, rp, num_classes=1)
    selected = set(storage.read_table(rp.selection).column("image_id").to_pylist())
    assert selected == {"a", "b", "t1", "t2", "t3", "t4", "t5"}
    assert selected == {i for i, _ in reference_pseudo_code_2(detections, 3, 0.2)}


def test_class_thresholds_match_the_reference():
    detections = random_detections(7, n=500)
    got = class_thresholds(detections, k=9, min_score=0.2)
    for c in range(5):
        above = sorted(detections[(detections.class_id == c) & (detections.score > 0.2)]["score"])
        if above:
            assert got[c] == pytest.approx(above[min(9, len(above)) - 1])
        else:
            assert c not in got


def test_non_confidence_strategies_select_below_min_score(tmp_path):
    """A margin of 0.05 is the most informative detection: the confidence floor was applied when
    scoring, so selection must not drop it again."""
    detections = pd.DataFrame({"image_id": ["close_call", "sure"], "class_id": np.zeros(2, np.int16),
                               "score": np.array([0.05, 0.9], np.float32)})
    write_detection_parts(detections, str(tmp_path / "d"), parts=1)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    select_round(str(tmp_path / "d"), StrategyConfig(name="margin", k=1, min_score=0.2), 0, rp, num_classes=1)
    assert storage.read_table(rp.selection).column("image_id").to_pylist() == ["close_call"]


def reference_budget(selection: pd.DataFrame, budget: int) -> set[str]:
    """The `budget` images with the lowest score, ties by image id, written out longhand."""
    best: dict[str, float] = {}
    for image_id, score in zip(selection["image_id"], selection["score"]):
        best[image_id] = min(score, best.get(image_id, float("inf")))
    return set(sorted(best, key=lambda image_id: (best[image_id], image_id))[:budget])


@pytest.mark.parametrize("budget", [1, 5, 40, 10_000])
def test_streamed_budget_matches_the_reference(tmp_path, budget):
    detections = random_detections(11, n=2500)
    write_detection_parts(detections, str(tmp_path / "d"), parts=5)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    summary = select_round(str(tmp_path / "d"), StrategyConfig(k=12, budget=budget), 0, rp, num_classes=5)
    got = set(storage.read_table(rp.selection).column("image_id").to_pylist())
    assert got == reference_budget(select_per_class(detections, k=12, min_score=0.2), budget)
    assert summary.n_images == len(got) <= budget


def test_out_of_range_class_among_candidates_is_a_clear_error(tmp_path):
    detections = pd.DataFrame({"image_id": ["a"], "class_id": np.array([7], np.int16),
                               "score": np.array([0.5], np.float32)})
    write_detection_parts(detections, str(tmp_path / "d"), parts=1)
    with pytest.raises(ValueError, match="class_id 7 is outside 0..2"):
        select_round(str(tmp_path / "d"), StrategyConfig(), 0, RoundPaths(str(tmp_path / "run"), 0), num_classes=3)
