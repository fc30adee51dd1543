"""Diversity strategies (issue 26): k-center greedy picks, per-class selection through it, and TypiClust's
typical picks for a cold start.

Geometry is planted by hand: near-duplicate images point the same way, distinct ones are orthogonal, so
which images a spread-out pick must take is known without running the code under test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raylib import labels, schemas, storage
from raylib.config import StrategyConfig
from raylib.diversity import k_center_greedy, typical_picks
from raylib.paths import RoundPaths
from raylib.select import select_round
from tests.helpers import write_detection_parts

DIM = 8


def _direction(axis: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    vector = np.zeros(DIM, np.float32)
    vector[axis] = 1.0
    return vector + noise * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def test_k_center_takes_one_image_per_cluster_starting_from_row_0():
    rows = [_direction(axis, 0.01, seed) for seed, axis in enumerate([2, 2, 0, 2, 1, 0, 1, 2, 0])]
    picks = k_center_greedy(np.stack(rows) * np.arange(1, 10)[:, None], 3)  # lengths don't matter: cosine
    assert picks[0] == 0 and sorted({[2, 2, 0, 2, 1, 0, 1, 2, 0][i] for i in picks}) == [0, 1, 2]
    assert list(k_center_greedy(np.stack(rows), 1)) == [0]


def test_k_center_ties_and_duplicates_are_deterministic():
    same = np.ones((5, DIM), np.float32)
    assert list(k_center_greedy(same, 3)) == [0, 1, 2]  # all at distance 0: lowest index, none twice
    assert sorted(k_center_greedy(same, 9)) == [0, 1, 2, 3, 4]  # k > n: every row once
    assert len(k_center_greedy(np.zeros((0, DIM), np.float32), 3)) == 0


# Class 0: a0-a3 and a7 are duplicates (axis 0), a4/a6 point along axis 1, a5 along axis 2; the
# lower the index, the lower (more informative) the score. Class 1: b1 duplicates b0, b2 is apart.
# c0 (class 1 too) scores 0.05: under min_score for a confidence, a candidate for kcenter (random scores).
AXES = {"a0": 0, "a1": 0, "a2": 0, "a3": 0, "a4": 1, "a5": 2, "a6": 1, "a7": 0, "b0": 3, "b1": 3, "b2": 4, "c0": 5}
DETECTIONS = pd.DataFrame(
    [(f"a{i}", 0, 0.21 + 0.01 * i) for i in range(8)] + [(f"b{i}", 1, 0.3 + 0.01 * i) for i in range(3)]
    + [("c0", 1, 0.05)], columns=["image_id", "class_id", "score"])


def _write_round(root: str, detection_parts: int, embedding_parts: int) -> RoundPaths:
    rp = RoundPaths(root, 0)
    write_detection_parts(DETECTIONS.sample(frac=1.0, random_state=detection_parts), rp.detections, detection_parts)
    ids = sorted(AXES)
    for i, chunk in enumerate(np.array_split(np.array(ids), embedding_parts)):
        vectors = [_direction(AXES[image_id]) for image_id in chunk]  # exact: ties are known
        table = pa.table({"image_id": chunk.tolist(),
                          "embedding": pa.array([v.astype(np.float16).tolist() for v in vectors],
                                                pa.list_(pa.float16()))})
        storage.write_table(schemas.check(table, schemas.EMBEDDINGS, "embeddings"), f"{rp.embeddings}/part-{i}.parquet")
    return rp


def _selected(rp: RoundPaths, **strategy) -> dict[int, list[str]]:
    select_round(rp.detections, StrategyConfig(k=2, min_score=0.2, **strategy), 0, rp, num_classes=2)
    table = storage.read_table(rp.selection).to_pandas().sort_values(["class_id", "rank"])
    return {int(c): group["image_id"].tolist() for c, group in table.groupby("class_id")}


def test_cls_iou_diverse_spreads_each_class_quota_over_its_candidates(tmp_path):
    rp = _write_round(str(tmp_path / "one"), 1, 1)
    assert _selected(rp, name="cls_iou") == {0: ["a0", "a1"], 1: ["b0", "b1"]}  # two near-duplicates each
    # 2 x 4 candidates of class 0 (a0-a7): the most uncertain, then the farthest from it (a4 and a5 tie
    # at orthogonal; a4 scores lower). Class 1 has 2 candidates above 0.2 plus b2: b0, then b2.
    assert _selected(rp, name="cls_iou_diverse", pool_factor=4) == {0: ["a0", "a4"], 1: ["b0", "b2"]}
    # pool_factor 1: the candidates are cls_iou's own picks, so diversity has nothing to choose from.
    assert _selected(rp, name="cls_iou_diverse", pool_factor=1) == {0: ["a0", "a1"], 1: ["b0", "b1"]}
    thresholds = storage.read_table(rp.thresholds).to_pandas()  # pool_factor 1: cls_iou's thresholds
    assert thresholds["threshold"].tolist() == pytest.approx([0.22, 0.31])
    # Another split of the same rows into parts: the same picks.
    other = _write_round(str(tmp_path / "three"), 3, 2)
    assert _selected(other, name="cls_iou_diverse", pool_factor=4) == {0: ["a0", "a4"], 1: ["b0", "b2"]}


def test_the_labelled_set_counts_as_covered(tmp_path):
    """Labelled images along axes 0 and 1: class 0's only candidate away from them (a5, axis 2) comes
    first; then every candidate is at distance 0 from something covered, and ties go to the lowest score."""
    rp = _write_round(str(tmp_path), 1, 1)
    covered = rp.labelled_scoring.embeddings
    table = pa.table({"image_id": ["l0", "l1"], "embedding": pa.array(
        [_direction(0).astype(np.float16).tolist(), _direction(1).astype(np.float16).tolist()], pa.list_(pa.float16()))})
    storage.write_table(schemas.check(table, schemas.EMBEDDINGS, "embeddings"), f"{covered}/part-0.parquet")
    select_round(rp.detections, StrategyConfig(name="cls_iou_diverse", k=2, min_score=0.2, pool_factor=4), 0, rp,
                 num_classes=2, covered=covered)
    table = storage.read_table(rp.selection).to_pandas().sort_values(["class_id", "rank"])
    assert table[table["class_id"] == 0]["image_id"].tolist() == ["a5", "a0"]
    assert table[table["class_id"] == 1]["image_id"].tolist() == ["b0", "b2"]  # axes 3 and 4: nothing covered


def test_kcenter_spreads_random_candidates_with_no_confidence_floor(tmp_path):
    rp = _write_round(str(tmp_path), 2, 1)
    # Stored scores stand for random's: c0 (0.05) is the lowest of class 1 and a candidate, picked
    # first; b0, b1 and b2 are then all orthogonal to it: the lowest score of them.
    assert _selected(rp, name="kcenter", pool_factor=4) == {0: ["a0", "a4"], 1: ["c0", "b0"]}


def test_a_candidate_without_an_embedding_is_a_clear_error(tmp_path):
    rp = _write_round(str(tmp_path), 1, 1)
    kept = storage.read_table(rp.embeddings)
    storage.delete(rp.embeddings)
    storage.write_table(kept.filter(pa.array([i != "a4" for i in kept.column("image_id").to_pylist()])),
                        f"{rp.embeddings}/part-0.parquet")
    with pytest.raises(RuntimeError, match=r"no embedding for 1 candidate images \(e.g. 'a4'\); rescore"):
        _selected(rp, name="cls_iou_diverse")


def test_typical_picks_the_dense_core_of_each_cluster_never_an_outlier():
    """Three clusters of 6, 10 and 15 rows round axes 0, 1, 2: a core row on the axis, rows around it at
    0.05 in +-other axes (symmetric, so the core has the smallest mean distance to its neighbours) and
    one outlier at 0.3 off the axis. One pick per cluster: its core, wherever the rows are."""
    rows, cores = [], []
    for axis, size in ((0, 6), (1, 10), (2, 15)):
        cores.append(len(rows))
        rows.append(_direction(axis))
        others = [b for b in range(DIM) if b != axis]
        for j in range(size - 2):
            offset = np.zeros(DIM, np.float32)
            offset[others[(j // 2) % len(others)]] = 0.05 if j % 2 == 0 else -0.05
            rows.append(_direction(axis) + offset)
        outlier = _direction(axis)
        outlier[others[0]] += 0.3
        rows.append(outlier)
    order = np.random.default_rng(7).permutation(len(rows))  # the picks don't come from row order
    shuffled = np.stack(rows)[order] * 3.0  # nor from lengths (cosine)
    picks = typical_picks(shuffled, 3, seed=0)
    assert sorted(order[picks].tolist()) == cores
    assert np.array_equal(typical_picks(shuffled, 3, seed=0), picks)  # a function of rows, order and seed
    assert len(typical_picks(shuffled[:2], 5, seed=0)) == 2 and len(typical_picks(shuffled, 0, seed=0)) == 0


def test_kcenter_seed_set_never_takes_a_duplicate_while_another_image_is_left(tmp_path, ray_session):
    """`loop.seed_strategy=kcenter` (and typical): 9 byte-identical copies of one scene and 3 other scenes; a seed set
    of 4 spread over the start model's embeddings is one copy and the 3 others (copies are at distance
    0 from each other, whatever the model). Without model.weights: refused in one line."""
    import io
    from dataclasses import replace

    from raylib import stages
    from raylib.config import Config, ConfigError, DataConfig, LoopConfig, ModelConfig, ScoreConfig
    from raylib.dataset import Dataset
    from tests.bad_images import scene
    from tests.test_score import CLASSES, confident_weights

    def jpeg(seed: int) -> bytes:
        buffer = io.BytesIO()
        scene(seed=seed).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    files = {f"copy_{n}.jpg": jpeg(0) for n in range(9)} | {f"other_{s}.jpg": jpeg(s) for s in (1, 2, 3)}
    for name, data in files.items():
        storage.write_bytes(str(tmp_path / "pool" / name), data)
    manifest = str(tmp_path / "pool.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": list(files), "uri": [str(tmp_path / "pool" / n)
                                                                                 for n in files]}),
                                      schemas.POOL, "pool"), manifest)
    cfg = Config(run_root=str(tmp_path / "run"), data=DataConfig(max_pixels=2_000_000),
                 model=ModelConfig(size="nano", input_size=96), score=ScoreConfig(batch_size=4, num_actors=1),
                 loop=LoopConfig(seed_size=4, seed_strategy="kcenter"), strategy=StrategyConfig(pool_factor=3))
    ds = Dataset(pool_manifest=manifest, test_manifest=manifest, class_names=CLASSES)
    with pytest.raises(ConfigError, match=r"^loop.seed_strategy=kcenter needs model.weights"):
        stages.seed_ids(cfg, ds)
    cfg = replace(cfg, model=replace(cfg.model, weights=confident_weights(str(tmp_path / "w.pt"))))
    chosen = stages.seed_ids(cfg, ds)
    assert len(chosen) == 4 and sum(i.startswith("copy_") for i in chosen) == 1, chosen
    # typical: 4 clusters of the candidates are the copies and each other scene: one typical image each.
    typical = stages.seed_ids(replace(cfg, loop=replace(cfg.loop, seed_strategy="typical")), ds)
    assert len(typical) == 4 and sum(i.startswith("copy_") for i in typical) == 1, typical
    assert sorted(stages.seed_ids(replace(cfg, loop=replace(cfg.loop, seed_strategy="random")), ds)) == \
        sorted(labels.sample_ids(manifest, 4, cfg.seed))
