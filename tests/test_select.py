"""Selection equals a plain reading of pseudo-code 2, in memory and streamed over Parquet files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raylib import schemas, select, storage
from raylib.config import STRATEGIES, StrategyConfig
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


def reference_budget(detections: pd.DataFrame, selection: pd.DataFrame, budget: int) -> set[str]:
    """Written out longhand. A union larger than `budget`: the `budget` images with the lowest score, ties
    by image id. A smaller one: filled by turns over the classes (0, 1, ...), each taking its next image
    not yet chosen, by that image's lowest score in the class above 0.2, ties by image id."""
    best: dict[str, float] = {}
    for image_id, score in zip(selection["image_id"], selection["score"]):
        best[image_id] = min(score, best.get(image_id, float("inf")))
    if len(best) >= budget:
        return set(sorted(best, key=lambda image_id: (best[image_id], image_id))[:budget])
    chosen = set(best)
    queues = {}
    for c in sorted(set(detections["class_id"])):
        lowest: dict[str, float] = {}
        for row in detections[(detections["class_id"] == c) & (detections["score"] > 0.2)].itertuples():
            lowest[row.image_id] = min(row.score, lowest.get(row.image_id, float("inf")))
        queues[c] = sorted(lowest, key=lambda image_id: (lowest[image_id], image_id))
    while len(chosen) < budget and any(queues.values()):
        for c in sorted(queues):
            while queues[c] and queues[c][0] in chosen:
                queues[c].pop(0)
            if queues[c] and len(chosen) < budget:
                chosen.add(queues[c].pop(0))
    return chosen


def write_image_status(image_ids: list[str], uri: str, errors: tuple[str, ...] = ()) -> None:
    """A round's image_status/: every image ok but `errors`."""
    n = len(image_ids)
    status = ["error" if i in errors else "ok" for i in image_ids]
    table = pa.table([pa.array(np.zeros(n, np.int16)), pa.array(image_ids, pa.string()), pa.array(status),
                      pa.nulls(n, pa.string()), pa.array(np.zeros(n, np.int32)), pa.nulls(n, pa.int32()),
                      pa.nulls(n, pa.int32()), pa.array([f"/pool/{i}.jpg" for i in image_ids])],
                     schema=schemas.IMAGE_STATUS)
    storage.write_table(table, f"{uri}/part-000.parquet")


@pytest.mark.parametrize("rows_per_merge", [65536, 37])  # 37: the fill's candidates merged after every file
@pytest.mark.parametrize("budget", [1, 5, 40, 60, 10_000])
def test_streamed_budget_matches_the_reference(tmp_path, monkeypatch, budget, rows_per_merge):
    monkeypatch.setattr(select, "ROWS_PER_MERGE", rows_per_merge)
    detections = random_detections(11, n=2500)
    write_detection_parts(detections, str(tmp_path / "d"), parts=5)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    scored = sorted(set(detections["image_id"]))
    write_image_status(scored, rp.image_status)
    selection = select_per_class(detections, k=12, min_score=0.2)
    assert selection["image_id"].nunique() < 60 < len(scored)  # 60 fills from the classes' next images
    summary = select_round(str(tmp_path / "d"), StrategyConfig(k=12, budget=budget), 0, rp, num_classes=5)
    got = storage.read_table(rp.selection).to_pandas()
    assert set(got["image_id"]) == reference_budget(detections, selection, budget)
    assert summary.n_images == got["image_id"].nunique() == min(budget, len(scored))
    assert not got.duplicated(["image_id", "class_id"]).any()
    if budget > selection["image_id"].nunique():  # filled: each class's ranks go on from its quota's
        assert got.groupby("class_id")["rank"].apply(lambda r: sorted(r) == list(range(len(r)))).all()


def test_fill_takes_turns_over_classes_then_images_without_detections(tmp_path):
    """k=1. Class 0: a 0.30, b 0.40, c 0.50; class 1: a 0.35, d 0.60. Both quotas pick a: the union is {a}.
    budget 3: class 0's next is b; class 1's next (a) is taken, so d. budget 4: then class 0's c. Images e
    (no detection) and f (no detection, unreadable) were scored too: budget 9 takes e, never f: 5 images."""
    detections = pd.DataFrame({"image_id": ["a", "b", "c", "a", "d"], "class_id": np.array([0, 0, 0, 1, 1], np.int16),
                               "score": np.array([0.30, 0.40, 0.50, 0.35, 0.60], np.float32)})
    rp = RoundPaths(str(tmp_path / "run"), 0)
    write_detection_parts(detections, rp.detections, parts=2)
    write_image_status(["a", "b", "c", "d", "e", "f"], rp.image_status, errors=("f",))

    def selected(budget):
        select_round(rp.detections, StrategyConfig(k=1, budget=budget), 0, rp, num_classes=2)
        return storage.read_table(rp.selection).to_pandas().sort_values(["class_id", "rank"])

    assert set(selected(None)["image_id"]) == {"a"}
    three = selected(3)
    assert set(three["image_id"]) == {"a", "b", "d"}
    assert three[["image_id", "class_id", "rank"]].values.tolist() == [["a", 0, 0], ["b", 0, 1], ["a", 1, 0],
                                                                       ["d", 1, 1]]
    assert set(selected(4)["image_id"]) == {"a", "b", "c", "d"}
    nine = selected(9)
    assert set(nine["image_id"]) == {"a", "b", "c", "d", "e"}
    assert nine[nine["image_id"] == "e"][["class_id", "score"]].values.tolist() == [[-1, 1.0]]


def _write_pool_round(root: str) -> tuple[RoundPaths, list[str]]:
    """60 images with detections of 3 classes (random scores), 10 scored without any, 2 unreadable;
    an embedding per ok image (random directions). Returns the round's paths and its ok images."""
    rng = np.random.default_rng(3)
    with_detections = [f"img{i:03d}" for i in range(60)]
    detections = pd.DataFrame({"image_id": rng.choice(with_detections, 400),
                               "class_id": rng.integers(0, 3, 400).astype(np.int16),
                               "score": rng.uniform(0.21, 1.0, 400).astype(np.float32)})
    detections = pd.concat([detections, pd.DataFrame({"image_id": with_detections, "class_id": np.int16(0),
                                                      "score": np.float32(0.9)})], ignore_index=True)
    rp = RoundPaths(root, 1)
    write_detection_parts(detections, rp.detections, parts=3)
    ok = with_detections + [f"empty{i}" for i in range(10)]
    write_image_status(ok + ["bad0", "bad1"], rp.image_status, errors=("bad0", "bad1"))
    table = pa.table({"image_id": ok, "embedding": pa.array(rng.normal(size=(len(ok), 8)).astype(np.float16).tolist(),
                                                             pa.list_(pa.float16()))})
    storage.write_table(schemas.check(table, schemas.EMBEDDINGS, "embeddings"), f"{rp.embeddings}/part-0.parquet")
    return rp, ok


@pytest.mark.parametrize("name", STRATEGIES)
def test_budget_selects_exactly_budget_images_for_every_strategy(tmp_path, name):
    """Trimmed (2), filled from detections (25: k=3 x 3 classes select at most 9), filled past them with the
    images without detections (65), and more than the round holds (200: every ok image, 70)."""
    rp, ok = _write_pool_round(str(tmp_path / "run"))
    for budget in (2, 25, 65, 200):
        summary = select_round(rp.detections, StrategyConfig(name=name, k=3, budget=budget, pool_factor=2), 1, rp,
                               num_classes=3)
        got = set(storage.read_table(rp.selection).column("image_id").to_pylist())
        assert len(got) == summary.n_images == min(budget, len(ok)), (name, budget)
        assert got <= set(ok)
        if budget <= 60:
            assert not any(image_id.startswith("empty") for image_id in got)


def test_out_of_range_class_among_candidates_is_a_clear_error(tmp_path):
    detections = pd.DataFrame({"image_id": ["a"], "class_id": np.array([7], np.int16),
                               "score": np.array([0.5], np.float32)})
    write_detection_parts(detections, str(tmp_path / "d"), parts=1)
    with pytest.raises(ValueError, match="class_id 7 is outside 0..2"):
        select_round(str(tmp_path / "d"), StrategyConfig(), 0, RoundPaths(str(tmp_path / "run"), 0), num_classes=3)


def test_a_budget_round_labels_exactly_budget_images_through_the_simulated_oracle(tmp_path):
    """30 pool images with ground truth, 12 with detections: budget 20 (k=1 selects at most 2) is filled with
    the other 10 with detections and 8 without; the oracle adds exactly those 20 to the labelled set."""
    from raylib import oracle
    from raylib.config import LoopConfig
    from raylib.dataset import Dataset
    from raylib.formats import voc
    from tests.helpers import labels_table, write_manifest

    pool_ids = [f"p{i:02d}" for i in range(30)]
    for image_id in pool_ids:
        storage.write_bytes(str(tmp_path / "voc" / "Annotations" / f"{image_id}.xml"), voc.write_voc(
            voc.VocAnnotation(f"{image_id}.jpg", 64, 48, objects=[voc.VocObject("cat", 1, 2, 30, 40)])))
    ds = Dataset(write_manifest(str(tmp_path / "pool.parquet"), pool_ids),
                 write_manifest(str(tmp_path / "test.parquet"), ["t0"]), ["cat", "dog"], voc_root=str(tmp_path / "voc"))
    rng = np.random.default_rng(0)
    detections = pd.DataFrame({"image_id": rng.choice(pool_ids[:12], 60), "class_id": rng.integers(0, 2, 60).astype(np.int16),
                               "score": rng.uniform(0.3, 0.9, 60).astype(np.float32)})
    rp = RoundPaths(str(tmp_path / "run"), 1)
    write_detection_parts(detections, rp.detections, parts=2)
    write_image_status(pool_ids, rp.image_status)
    select_round(rp.detections, StrategyConfig(k=1, budget=20), 1, rp, num_classes=2)
    previous = str(tmp_path / "labels_before.parquet")
    storage.write_table(labels_table([("old", "train", [])]), previous)
    summary = oracle.label_selection(rp, ds, LoopConfig(oracle="simulate"), 0, previous)
    labelled = set(storage.read_table(rp.labels).column("image_id").to_pylist())
    assert len(labelled) == 21 and "old" in labelled and set(pool_ids[:12]) < labelled
    assert summary == {"n_selected": 20, "n_labelled": 20, "n_missing": 0}


def test_fill_breaks_ties_by_image_id_across_files(tmp_path, monkeypatch):
    """Class 0: a at 0.3 (the quota, k=1), then z9 ... z0 all at 0.5, written in that order over 5 files. A
    budget of 4 fills 3 by (score, image id): z0, z1, z2, the last to arrive, after z9-z7 filled the list."""
    monkeypatch.setattr(select, "ROWS_PER_MERGE", 1)
    tied = [f"z{i}" for i in range(9, -1, -1)]
    detections = pd.DataFrame({"image_id": ["a"] + tied, "class_id": np.zeros(11, np.int16),
                               "score": np.array([0.3] + [0.5] * 10, np.float32)})
    rp = RoundPaths(str(tmp_path / "run"), 0)
    write_detection_parts(detections, rp.detections, parts=5)
    write_image_status(["a"] + tied, rp.image_status)
    select_round(rp.detections, StrategyConfig(k=1, budget=4), 0, rp, num_classes=1)
    assert set(storage.read_table(rp.selection).column("image_id").to_pylist()) == {"a", "z0", "z1", "z2"}
