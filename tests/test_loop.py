"""Loop pieces that need no training: the stratified split, the streaming seed sample, stop rules."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from raylib import schemas, storage
from raylib.config import Config, LoopConfig
from raylib.loop import LoopResult, _stop_reason, sample_ids, stratified_split


def test_stratified_split_keeps_fractions_within_each_stratum():
    ids = [f"img{i:04d}" for i in range(1000)]
    strata = ["a" if i % 10 < 7 else ("b" if i % 10 < 9 else "c") for i in range(1000)]  # 700 / 200 / 100
    splits = stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=3)
    for stratum, size in (("a", 700), ("b", 200), ("c", 100)):
        counts = Counter(s for s, st in zip(splits, strata) if st == stratum)
        assert counts["train"] == round(0.7 * size)
        assert counts["val"] == round(0.15 * size)
        assert counts["test"] == size - counts["train"] - counts["val"]


def test_stratified_split_is_deterministic_and_seed_dependent():
    ids = [f"img{i}" for i in range(200)]
    strata = [str(i % 3) for i in range(200)]
    first = stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=1)
    assert first == stratified_split(list(reversed(ids)), list(reversed(strata)), (0.7, 0.15, 0.15), seed=1)[::-1]
    assert first != stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=2)


def test_stratified_split_small_stratum_counts_add_up():
    splits = stratified_split(["x", "y"], ["s", "s"], (0.7, 0.15, 0.15), seed=0)
    assert sorted(splits) == ["train", "train"] or sorted(splits).count("train") == 1
    assert len(splits) == 2


def _manifest(tmp_path, ids, name="pool.parquet"):
    uri = str(tmp_path / name)
    table = pa.table({"image_id": ids, "uri": [f"/data/{i}.jpg" for i in ids]})
    storage.write_table(schemas.check(table, schemas.POOL, "pool"), uri)
    return uri


def test_sample_ids_is_deterministic_sized_and_independent_of_file_order(tmp_path):
    ids = [f"img{i:05d}" for i in range(5000)]
    forward = sample_ids(_manifest(tmp_path, ids), 100, seed=7)
    backward = sample_ids(_manifest(tmp_path, ids[::-1], "rev.parquet"), 100, seed=7)
    assert len(forward) == 100 == len(set(forward))
    assert forward == backward
    assert forward != sample_ids(_manifest(tmp_path, ids), 100, seed=8)
    assert sample_ids(_manifest(tmp_path, ids[:10], "small.parquet"), 100, seed=7) == sorted(ids[:10])


def test_sample_ids_is_roughly_uniform(tmp_path):
    ids = [f"img{i:05d}" for i in range(4000)]
    uri = _manifest(tmp_path, ids)
    hits = Counter()
    for seed in range(40):
        hits.update(int(i[3:]) // 1000 for i in sample_ids(uri, 200, seed))
    # 8000 draws over 4 equal quarters: each expects 2000; a biased sampler would be far off.
    assert all(1700 < hits[q] < 2300 for q in range(4)), hits


@pytest.mark.parametrize(
    "map50, gain, expected",
    [([0.1, 0.3, 0.5], 0.05, ""), ([0.1, 0.5, 0.51, 0.52], 0.05, "mAP50 gained"), ([0.5, 0.52], 0.05, "")],
)
def test_stop_rule_model_performance(map50, gain, expected):
    cfg = Config(loop=LoopConfig(rounds=10, stop_min_gain=gain, stop_patience=2))
    result = LoopResult(run_root="x", rounds_done=len(map50), map50=map50)
    reason = _stop_reason(cfg, result, len(map50) - 1)
    assert (expected in reason) if expected else reason == ""


def test_stop_after_last_round():
    cfg = Config(loop=LoopConfig(rounds=2))
    assert "2 rounds done" in _stop_reason(cfg, LoopResult("x", 2, [0.1, 0.2]), 1)
