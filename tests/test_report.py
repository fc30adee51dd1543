"""The report reads committed round outputs and shows the numbers they hold (figures 6.4-6.8)."""
from __future__ import annotations

import json
import os

import pyarrow as pa

from raylib import paths, report, schemas, storage
from raylib.paths import RoundPaths
from tests.helpers import labels_table, obj

CLASSES = ["cat", "dog"]


def _labels(rows):
    """rows: (image_id, split, class ids of its objects)."""
    return labels_table([(image_id, split, [obj(c, 0, 0, 5, 5) for c in classes]) for image_id, split, classes in rows])


def _fake_run(run_root: str, strategy: str, seed: int, map50s: list[float]) -> None:
    storage.write_text(paths.run_info(run_root), json.dumps({"strategy": strategy, "seed": seed, "classes": CLASSES}))
    pool = pa.table({"image_id": [f"p{i}" for i in range(10)], "uri": [f"/p{i}.jpg" for i in range(10)]})
    storage.write_table(schemas.check(pool, schemas.POOL, "pool"), paths.pool_manifest(run_root))
    labelled = [("p0", "train", [0, 0]), ("p1", "val", [1]), ("p2", "test", [])]
    storage.write_table(_labels(labelled), paths.seed_labels(run_root))
    for r, m in enumerate(map50s):
        rp = RoundPaths(run_root, r)
        storage.write_text(rp.metrics, json.dumps({"map50": m, "ap50_per_class": {"cat": m + 0.1, "dog": m - 0.1}}))
        thresholds = pa.table({"round": [r, r], "class_id": [0, 1], "threshold": [0.3 + r / 10, None],
                               "n_candidates": [5, 0]})
        storage.write_table(schemas.check(thresholds, schemas.THRESHOLDS, "thresholds"), rp.thresholds)
        labelled = labelled + [(f"p{3 + r}", "train", [1, 1, 1])]
        storage.write_table(_labels(labelled), rp.labels)


def test_history_counts_match_the_round_outputs(tmp_path):
    run_root = str(tmp_path / "runs" / "cls_iou_seed0")
    _fake_run(run_root, "cls_iou", 0, [0.2, 0.4])
    history = report.load_history(run_root)
    assert history.labelled == [3, 4]
    assert history.splits[0] == {"train": 1, "val": 1, "test": 1}
    assert history.splits[1]["train"] == 2
    assert history.objects_per_class == [[2, 1], [2, 4]]
    assert abs(history.thresholds[0][0] - 0.3) < 1e-6 and history.thresholds[0][1] is None
    assert history.map50 == [0.2, 0.4]
    assert [round(ap[0], 6) for ap in history.ap50] == [0.3, 0.5]


def test_report_writes_markdown_and_every_figure(tmp_path):
    run_root = str(tmp_path / "runs" / "cls_iou_seed0")
    _fake_run(run_root, "cls_iou", 0, [0.2, 0.4])
    uri = report.write_report(run_root)
    text = storage.read_text(uri)
    for figure in ("6.4", "6.5", "6.6", "6.7", "6.8"):
        assert f"figure {figure}" in text
    assert "| 30.0% | 40.0% |" in text and "N/A" in text  # dog had no candidates
    for png in ("splits", "thresholds", "ap50", "objects", "map50"):
        with open(os.path.join(paths.report_dir(run_root), f"{png}.png"), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_comparison_averages_seeds_per_strategy(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(str(runs / "cls_iou_seed0"), "cls_iou", 0, [0.2, 0.4])
    _fake_run(str(runs / "cls_iou_seed1"), "cls_iou", 1, [0.4, 0.6])
    _fake_run(str(runs / "random_seed0"), "random", 0, [0.1, 0.2])
    uri = report.compare_runs(str(runs), str(runs / "comparison"))
    text = storage.read_text(uri)
    assert "| cls_iou | 2 | 4 | 0.5000 | 0.4000-0.6000 |" in text
    assert "| random | 1 | 3 | 0.1000 | 0.1000-0.1000 |" in text
    assert (runs / "comparison" / "comparison.png").stat().st_size > 1000


def test_comparison_without_runs_is_none(tmp_path):
    assert report.compare_runs(str(tmp_path), str(tmp_path / "c")) is None


def test_threshold_table_shows_only_class_quota_selections_with_average_and_median(tmp_path):
    run_root = str(tmp_path / "runs" / "cls_iou_seed0")
    _fake_run(run_root, "cls_iou", 0, [0.2, 0.4, 0.5])
    # Round 1's selection took every image left (empty thresholds); round 2 ended the loop (none).
    storage.write_table(schemas.empty(schemas.THRESHOLDS), RoundPaths(run_root, 1).thresholds)
    storage.delete(RoundPaths(run_root, 2).thresholds)
    storage.write_table(pa.table({"round": [0, 0], "class_id": [0, 1], "threshold": [0.2, 0.5],
                                  "n_candidates": [3, 4]}).cast(schemas.THRESHOLDS), RoundPaths(run_root, 0).thresholds)
    history = report.load_history(run_root)
    assert history.selected == [True, False, False]
    text = storage.read_text(report.write_report(run_root))
    section = text.split("(figure 6.5)")[1].split("##")[0]
    assert "| Class | 1 to 2 |" in section and "2 to 3" not in section and "3 to 4" not in section
    assert "| cat | 20.0% |" in section and "| dog | 50.0% |" in section
    assert "| Average | 35.0% |" in section and "| Median | 35.0% |" in section


def test_report_draws_calibration_of_rounds_that_have_it(tmp_path):
    from raylib import calibration

    run_root = str(tmp_path / "runs" / "cls_iou_seed0")
    _fake_run(run_root, "cls_iou", 0, [0.2, 0.4])
    rp = RoundPaths(run_root, 1)  # round 0 has none (a run from before calibration): left out
    storage.write_table(calibration.reliability_table([0.95, 0.92, 0.15], [1.0, 0.0, 0.25]), rp.calibration)
    storage.write_text(rp.calibration_summary, json.dumps({
        "n_images": 3, "n_detections": 3, "n_matched_iou50": 1, "spearman_loc_conf_true_iou": 0.5,
        "spearman_cls_conf_true_iou": -0.5, "mean_loc_conf": 0.6733, "mean_true_iou": 0.4167, "min_score": 0.05}))
    text = storage.read_text(report.write_report(run_root))
    section = text[text.index("## Calibration"):]
    assert "| 2 | 3 | 3 | 1 | 0.5000 | -0.5000 | 0.6733 | 0.4167 |" in section
    assert "| 0.9-1.0 | 0.5000 (2) |" in section and "| 0.1-0.2 | 0.2500 (1) |" in section
    assert "| 0.0-0.1 | - |" in section and ">= 0.05" in section
    with open(os.path.join(paths.report_dir(run_root), "calibration.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pool_size_comes_from_the_parquet_footers(tmp_path, monkeypatch):
    """The pool row count is the footers' (a file, or a folder of parts), never a read of the id column."""
    run_root = str(tmp_path / "runs" / "cls_iou_seed0")
    _fake_run(run_root, "cls_iou", 0, [0.2])
    monkeypatch.setattr(storage, "read_table", _refuse_pool_reads(storage.read_table))
    assert report.load_history(run_root).pool_size == 10
    folder = tmp_path / "parts"
    for part, n in enumerate((3, 0, 4)):
        table = pa.table({"image_id": [f"{part}-{i}" for i in range(n)], "uri": ["/x.jpg"] * n})
        storage.write_table(schemas.check(table, schemas.POOL, "pool"), str(folder / f"part-{part}.parquet"))
    assert report.row_count(str(folder)) == 7


def _refuse_pool_reads(read_table):
    def guarded(uri, *args, **kwargs):
        assert not uri.endswith("pool.parquet"), f"the pool manifest was read: {uri}"
        return read_table(uri, *args, **kwargs)
    return guarded


def test_comparison_reads_only_the_run_folders_beside_each_other(tmp_path, monkeypatch):
    """`runs_root/*/run.json`: a run.json deeper down (a run's own sub-folder) is not a run, and the
    runs root is never listed recursively (a round's export holds a file per image)."""
    runs = tmp_path / "runs"
    _fake_run(str(runs / "cls_iou_seed0"), "cls_iou", 0, [0.2, 0.4])
    _fake_run(str(runs / "cls_iou_seed0" / "nested"), "random", 0, [0.9])
    (runs / "not_a_run").mkdir()
    (runs / "notes.txt").write_text("x")

    def no_recursive_listing(*args, **kwargs):
        raise AssertionError("the runs root was listed recursively")

    monkeypatch.setattr(storage, "list_files", no_recursive_listing)
    assert report.run_roots(str(runs)) == [str(runs / "cls_iou_seed0")]
    text = storage.read_text(report.compare_runs(str(runs), str(runs / "comparison")))
    assert "| cls_iou |" in text and "| random |" not in text


def test_comparison_says_whether_each_strategy_pays_against_random(tmp_path):
    """2 strategies x 3 seeds, every run labelling 3 then 4 images. Worked by hand: differences at 4 labels
    (cls_iou - random per seed) +0.1, 0.0, +0.2: mean 0.1, sd 0.1, half 4.303 x 0.1 / sqrt(3) = 0.2484.
    Areas over 3..4 labels, (m3 + m4) / 2: random 0.15, 0.25, 0.30; cls_iou 0.20, 0.25, 0.40; ratios
    1.3333, 1.0, 1.3333: mean 1.2222, sd 0.19245, half 4.303 x 0.19245 / sqrt(3) = 0.4781: across 1."""
    runs = tmp_path / "runs"
    for seed, (random_map, cls_iou_map) in enumerate([([0.1, 0.2], [0.1, 0.3]), ([0.2, 0.3], [0.2, 0.3]),
                                                      ([0.3, 0.3], [0.3, 0.5])]):
        _fake_run(str(runs / f"random_seed{seed}"), "random", seed, random_map)
        _fake_run(str(runs / f"cls_iou_seed{seed}"), "cls_iou", seed, cls_iou_map)
    text = storage.read_text(report.compare_runs(str(runs), str(runs / "comparison")))
    assert "| 4 | 0.1000 ± 0.2484 | 2 of 3 | 0.1000 | +0.100 / +0.000 / +0.200 |" in text
    assert "| cls_iou | 3 | 1.222 ± 0.478 | 1.333 / 1.000 / 1.333 |" in text
    assert "**cls_iou vs random** (3 paired seeds): **cannot tell**" in text
    assert "no interpolation" in text and "3 comparisons" in text  # 1 strategy x (2 counts + the area ratio)
