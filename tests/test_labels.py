"""The labelled set: the stratified split, the streaming seed sample, the oracle, the sets made once."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from raylib import labels, oracle, paths, schemas, storage
from raylib.formats import voc
from raylib.config import Config, DataConfig, LoopConfig
from raylib.labels import sample_ids, stratified_split
from raylib.paths import RoundPaths
from raylib.dataset import Dataset
from tests.helpers import labelled_ids, labels_table, write_manifest


def test_stratified_split_keeps_fractions_within_each_stratum():
    ids = [f"img{i:04d}" for i in range(1000)]
    strata = ["a" if i % 10 < 7 else ("b" if i % 10 < 9 else "c") for i in range(1000)]  # 700 / 200 / 100
    splits = stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=3).to_pylist()
    for stratum, size in (("a", 700), ("b", 200), ("c", 100)):
        counts = Counter(s for s, st in zip(splits, strata) if st == stratum)
        assert counts["train"] == round(0.7 * size)
        assert counts["val"] == round(0.15 * size)
        assert counts["test"] == size - counts["train"] - counts["val"]


def test_stratified_split_is_deterministic_and_seed_dependent():
    ids = [f"img{i}" for i in range(200)]
    strata = [str(i % 3) for i in range(200)]
    first = stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=1).to_pylist()
    reverse = stratified_split(list(reversed(ids)), list(reversed(strata)), (0.7, 0.15, 0.15), seed=1).to_pylist()
    assert first == reverse[::-1]
    assert first != stratified_split(ids, strata, (0.7, 0.15, 0.15), seed=2).to_pylist()


def test_stratified_split_small_stratum_counts_add_up():
    splits = stratified_split(["x", "y"], ["s", "s"], (0.7, 0.15, 0.15), seed=0).to_pylist()
    assert sorted(splits) == ["train", "train"] or sorted(splits).count("train") == 1
    assert len(splits) == 2


def _splits_one_image_at_a_time(ids, objects, fractions, seed):
    """The per-image rule of seed 6.6 as the labelled set assigned it before it was vectorised: stratum =
    the image's largest class id ("empty" without boxes); strata in name order; each stratum's ids sorted,
    shuffled as a list, then cut by largest-remainder counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = {}
    for image_id, boxes in zip(ids, objects):
        classes = {box["class_id"] for box in boxes}
        by_stratum.setdefault(str(max(classes)) if classes else "empty", []).append(image_id)
    assigned = {}
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum])
        rng.shuffle(members)
        exact = np.asarray(fractions) * len(members)
        counts = np.floor(exact).astype(int)
        for idx in np.argsort(-(exact - counts), kind="stable")[: len(members) - counts.sum()]:
            counts[idx] += 1
        bounds = np.cumsum(counts)
        for position, image_id in enumerate(members):
            assigned[image_id] = ("train", "val", "test")[int(np.searchsorted(bounds, position, side="right"))]
    return [assigned[image_id] for image_id in ids]


def test_assign_splits_gives_the_splits_of_the_per_image_rule():
    import random

    rnd = random.Random(5)
    ids = [f"site{rnd.randint(0, 3)}/img_{i:05d}" for i in rnd.sample(range(100000), 3000)]
    objects = [[{"class_id": rnd.choice([0, 1, 2, 3, 11, 12]), "x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0,
                 "difficult": False} for _ in range(rnd.choice([0, 0, 1, 2, 5]))] for _ in ids]
    table = labels_table([(i, "train", boxes) for i, boxes in zip(ids, objects)]).select(["image_id", "objects"])
    # Two chunks, the second a slice: the list offsets of a chunked, sliced column must line up.
    table = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    got = labels.assign_splits(table, (0.7, 0.15, 0.15), seed=4, round_added=3)
    want = _splits_one_image_at_a_time(ids, objects, (0.7, 0.15, 0.15), seed=4 * 1000 + 3)
    assert got.column("split").to_pylist() == want
    assert got.column("image_id").to_pylist() == ids
    assert set(got.column("round_added").to_pylist()) == {3}
    assert Counter(want)["val"] > 300  # every split is in play


def _manifest(tmp_path, ids, name="pool.parquet"):
    return write_manifest(str(tmp_path / name), ids)


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


def _selection(uri: str, ids: list[str]) -> None:
    table = pa.table({"round": pa.array([0] * len(ids), pa.int16()), "image_id": ids,
                      "class_id": pa.array([0] * len(ids), pa.int16()),
                      "score": pa.array([0.3] * len(ids), pa.float32()), "rank": pa.array(range(len(ids)), pa.int32())})
    storage.write_table(schemas.check(table, schemas.SELECTION, "selection"), uri)


def _unlabelled(uri: str, ids: list[str]) -> None:
    """The round's pool manifest, which the loop writes before scoring."""
    table = pa.table({"image_id": ids, "uri": [f"/pool/{i}.jpg" for i in ids]})
    storage.write_table(schemas.check(table, schemas.POOL, "pool"), uri)


def test_external_oracle_ingests_what_arrived_and_leaves_the_rest_in_the_pool(tmp_path):
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
    storage.write_table(labels_table([("old", "train", [])]), previous)
    rp = RoundPaths(cfg.run_root, 0)
    _selection(rp.selection, ["a", "b", "c", "never_labelled"])
    _unlabelled(rp.unlabelled, ["a", "b", "c", "never_labelled", "not_selected"])
    with pytest.raises(oracle.LabelsPending, match="2 of 4 selected images labelled, 1 missing, 1 delivered but invalid"):
        oracle.label_selection(rp, ds, cfg.loop, cfg.seed, previous)  # incomplete and not marked complete: waits
    storage.write_text(str(labels_in / "_complete" / "round=00"), "")  # the annotators: this is all
    summary = oracle.label_selection(rp, ds, cfg.loop, cfg.seed, previous)
    written = storage.read_table(rp.labels)
    assert sorted(written.column("image_id").to_pylist()) == ["a", "b", "old"]
    assert summary == {"n_selected": 4, "n_labelled": 2, "n_missing": 2}
    errors = json.loads(storage.read_text(rp.oracle_errors))
    assert set(errors) == {"c", "never_labelled"} and "zebra" in errors["c"]
    a = next(row for row in written.to_pylist() if row["image_id"] == "a")
    assert a["round_added"] == 1 and a["objects"][0]["class_id"] == 0


def test_external_oracle_without_any_label_waits_and_commits_nothing(tmp_path):
    labels_in = tmp_path / "corrected"  # the annotators have not delivered: no Annotations/ at all
    cfg = Config(run_root=str(tmp_path / "run"), data=DataConfig(classes=["cat"]),
                 loop=LoopConfig(oracle="external", labels_in=str(labels_in)))
    ds = Dataset(voc_root="unused", pool_manifest="unused", test_manifest="unused", class_names=["cat"])
    previous = str(tmp_path / "labels_seed.parquet")
    storage.write_table(labels_table([("old", "train", [])]), previous)
    rp = RoundPaths(cfg.run_root, 0)
    _selection(rp.selection, ["a", "b"])
    _unlabelled(rp.unlabelled, ["a", "b"])
    with pytest.raises(oracle.LabelsPending, match="0 of 2 selected images labelled, 2 missing"):
        oracle.label_selection(rp, ds, cfg.loop, cfg.seed, previous)
    assert not storage.exists(rp.labels)
    errors = json.loads(storage.read_text(rp.oracle_errors))
    assert set(errors) == {"a", "b"}


def _voc_dataset(tmp_path, pool_ids: list[str], test_ids: list[str]) -> Dataset:
    """A VOC root where every 4th image is background and the others hold a cat (even) or a dog (odd)."""
    root = tmp_path / "voc"
    for i, image_id in enumerate(pool_ids + test_ids):
        objects = [] if i % 4 == 0 else [voc.VocObject(("cat", "dog")[i % 2], 1, 2, 30, 40)]
        storage.write_bytes(str(root / "Annotations" / f"{image_id}.xml"),
                            voc.write_voc(voc.VocAnnotation(f"{image_id}.jpg", 64, 48, objects=objects)))
    return Dataset(write_manifest(str(tmp_path / "pool.parquet"), pool_ids),
                   write_manifest(str(tmp_path / "test.parquet"), test_ids + ["no_xml"]), ["cat", "dog"], voc_root=str(root))


def test_labelled_sets_are_written_once_under_their_run_paths(tmp_path):
    ds = _voc_dataset(tmp_path, [f"p{i:02d}" for i in range(40)], ["t0", "t1"])
    run_root = str(tmp_path / "run")

    perf = storage.read_table(labels.perf_test_labels(run_root, ds))
    assert storage.exists(paths.perf_test_labels(run_root))
    assert perf.column("image_id").to_pylist() == ["t0", "t1"]  # no_xml has no annotation: left out
    assert set(perf.column("split").to_pylist()) == {"perf_test"}

    seed = storage.read_table(labels.seed_labels(run_root, ds, LoopConfig(seed_size=12), seed=3))
    assert seed.num_rows == 12 and set(seed.column("split").to_pylist()) <= {"train", "val", "test"}
    assert set(seed.column("round_added").to_pylist()) == {0}

    # Every pool image, split per stratum: background 10 -> 7/2/1, cats 10 -> 7/2/1, dogs 20 -> 14/3/3.
    uri = labels.standalone_labels(run_root, ds, (0.7, 0.15, 0.15), seed=3)
    assert uri == paths.standalone_labels(run_root)
    assert Counter(storage.read_table(uri).column("split").to_pylist()) == {"train": 28, "val": 7, "test": 5}
    written = storage.read_bytes(uri)
    labels.standalone_labels(run_root, ds, (0.5, 0.25, 0.25), seed=9)
    assert storage.read_bytes(uri) == written  # made once

    assert labels.labels_for_round(run_root, 0, ds, (0.7, 0.15, 0.15), 3) == paths.seed_labels(run_root)
    assert labels.labels_for_round(run_root, 4, ds, (0.7, 0.15, 0.15), 3) == uri  # no loop labels: standalone


def test_read_split_gives_the_split_with_uris_and_names_missing_ids(tmp_path):
    uri = str(tmp_path / "labels.parquet")
    storage.write_table(labels_table([("a", "val", []), ("b", "train", []), ("gone", "val", [])]), uri)
    manifest = write_manifest(str(tmp_path / "pool.parquet"), ["a", "b"], ["/x/a.jpg", "/x/b.jpg"])
    split_labels, items, missing = labels.read_split(uri, manifest, "val")
    assert split_labels.column("image_id").to_pylist() == ["a", "gone"]
    assert items == [("a", "/x/a.jpg")] and missing == ["gone"]
    assert labels.split_counts(uri) == {"val": 2, "train": 1} and labelled_ids(uri) == {"a", "b", "gone"}
