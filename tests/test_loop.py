"""Loop pieces that need no training: the stratified split, the streaming seed sample, stop rules."""
from __future__ import annotations

import json
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


def _selection(uri: str, ids: list[str]) -> None:
    table = pa.table({"round": pa.array([0] * len(ids), pa.int16()), "image_id": ids,
                      "class_id": pa.array([0] * len(ids), pa.int16()),
                      "score": pa.array([0.3] * len(ids), pa.float32()), "rank": pa.array(range(len(ids)), pa.int32())})
    storage.write_table(schemas.check(table, schemas.SELECTION, "selection"), uri)


def test_last_selection_takes_every_image_left(tmp_path):
    from raylib.loop import _write_selection_of_all

    ids = [f"img{i}" for i in range(37)]
    out = str(tmp_path / "selection.parquet")
    assert _write_selection_of_all(_manifest(tmp_path, ids), 4, out) == 37
    table = schemas.check(storage.read_table(out), schemas.SELECTION, "selection")
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids)
    assert set(table.column("class_id").to_pylist()) == {-1} and set(table.column("round").to_pylist()) == {4}


def test_external_oracle_ingests_what_arrived_and_leaves_the_rest_in_the_pool(tmp_path):
    from raylib import voc
    from raylib.config import DataConfig
    from raylib.loop import _oracle
    from raylib.paths import RoundPaths
    from raylib.runtime import Dataset

    labels_in = tmp_path / "corrected"
    annotation = voc.VocAnnotation("a.jpg", 100, 80, objects=[voc.VocObject("cat", 1, 2, 50, 60)])
    storage.write_bytes(str(labels_in / "Annotations" / "a.xml"), voc.write_voc(annotation))
    storage.write_bytes(str(labels_in / "Annotations" / "b.xml"), voc.write_voc(
        voc.VocAnnotation("b.jpg", 100, 80, objects=[])))
    storage.write_bytes(str(labels_in / "Annotations" / "c.xml"), voc.write_voc(
        voc.VocAnnotation("c.jpg", 100, 80, objects=[voc.VocObject("zebra", 1, 2, 50, 60)])))
    cfg = Config(run_root=str(tmp_path / "run"), data=DataConfig(classes=["cat", "dog"]),
                 loop=LoopConfig(oracle="external", labels_in=str(labels_in)))
    ds = Dataset(voc_root="unused", pool_manifest="unused", test_manifest="unused", class_names=["cat", "dog"])
    previous = str(tmp_path / "labels_seed.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": ["old"], "split": ["train"], "round_added": [0],
                                                 "objects": [[]]}), schemas.LABELS, "labels"), previous)
    rp = RoundPaths(cfg.run_root, 0)
    _selection(rp.selection, ["a", "b", "c", "never_labelled"])
    summary = _oracle(cfg, ds, previous, rp)
    labels = storage.read_table(rp.labels)
    assert sorted(labels.column("image_id").to_pylist()) == ["a", "b", "old"]
    assert summary == {"n_selected": 4, "n_labelled": 2, "n_missing": 2}
    errors = json.loads(storage.read_text(storage.join(rp.root, "oracle_errors.json")))
    assert set(errors) == {"c", "never_labelled"} and "zebra" in errors["c"]
    a = next(row for row in labels.to_pylist() if row["image_id"] == "a")
    assert a["round_added"] == 1 and a["objects"][0]["class_id"] == 0


def test_external_oracle_without_any_label_waits_and_commits_nothing(tmp_path):
    from raylib.config import DataConfig
    from raylib.loop import LabelsPending, _oracle
    from raylib.paths import RoundPaths
    from raylib.runtime import Dataset

    labels_in = tmp_path / "corrected"  # the annotators have not delivered: no Annotations/ at all
    cfg = Config(run_root=str(tmp_path / "run"), data=DataConfig(classes=["cat"]),
                 loop=LoopConfig(oracle="external", labels_in=str(labels_in)))
    ds = Dataset(voc_root="unused", pool_manifest="unused", test_manifest="unused", class_names=["cat"])
    previous = str(tmp_path / "labels_seed.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": ["old"], "split": ["train"], "round_added": [0],
                                                 "objects": [[]]}), schemas.LABELS, "labels"), previous)
    rp = RoundPaths(cfg.run_root, 0)
    _selection(rp.selection, ["a", "b"])
    with pytest.raises(LabelsPending, match="none of the 2 selected images"):
        _oracle(cfg, ds, previous, rp)
    assert not storage.exists(rp.labels)
    errors = json.loads(storage.read_text(storage.join(rp.root, "oracle_errors.json")))
    assert set(errors) == {"a", "b"}
