"""The active-learning loop of the seed (5.2, 6.5-6.6), one round after another.

Round r:  train on the labelled set -> evaluate on the fixed performance test set -> score the
unlabelled pool -> select (per-class bottom-k; the last selection takes every image left) -> export
VOC pre-annotations -> oracle labels -> the labelled set of round r + 1.

Every stage writes its outputs under `<run_root>/round=NN/` (raylib/paths.py) and then a marker
`_done/<stage>`; re-running the same command skips committed stages and redoes the first uncommitted
one whole. All randomness is seeded from `cfg.seed`, so a resumed run selects what an uninterrupted one would.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from raylib import labels, paths, pool, report, schemas, storage
from raylib.calibration import calibrate_split
from raylib.config import Config
from raylib.evaluate import evaluate_split
from raylib.export import export_preannotations
from raylib.paths import RoundPaths
from raylib.run_config import check_run_config
from raylib.runtime import Dataset, ensure_dataset
from raylib.score import score_pool
from raylib.select import select_round
from raylib.stage import run_stage
from raylib.train import train_model


@dataclass
class LoopResult:
    run_root: str
    rounds_done: int
    map50: list[float] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    report: str = ""
    stopped_because: str = ""


def run_loop(cfg: Config) -> LoopResult:
    """Run (or resume) every round of the loop for `cfg`; returns the mAP50 curve and report path.

    A run root holds one run: its config is stored there first, and a rerun with other values is
    refused (raylib/run_config.py) rather than silently reusing the committed stages."""
    check_run_config(cfg)
    ds = ensure_dataset(cfg)
    report.write_run_info(cfg.run_root, cfg, ds.class_names)
    perf_test = labels.perf_test_labels(cfg.run_root, ds)
    labels_uri = labels.seed_labels(cfg.run_root, ds, cfg.loop, cfg.seed)
    result = LoopResult(run_root=cfg.run_root, rounds_done=0)

    for round_idx in range(cfg.loop.rounds):
        rp = RoundPaths(cfg.run_root, round_idx)
        n_labelled = storage.read_table(labels_uri, columns=["image_id"]).num_rows
        run_stage(rp, "train", lambda: _train(cfg, ds, labels_uri, rp))
        metrics = run_stage(rp, "evaluate", lambda: _evaluate(cfg, ds, labels_uri, perf_test, rp))
        result.rounds_done = round_idx + 1
        result.map50.append(metrics["map50"])
        result.labelled.append(n_labelled)
        report.write_report(cfg.run_root)

        stop = _stop_reason(cfg, result, round_idx)
        if stop:
            result.stopped_because = stop
            break
        remaining = run_stage(rp, "unlabelled", lambda: {"n_images": pool.write_remaining(
            ds.pool_manifest, labels.labelled_ids(labels_uri), rp.unlabelled)})
        if remaining["n_images"] == 0:
            result.stopped_because = "the pool is empty"
            break
        run_stage(rp, "score", lambda: asdict(score_pool(rp.unlabelled, rp.weights, rp, cfg, ds.class_names)))
        take_all = cfg.loop.last_round_takes_all and round_idx == cfg.loop.rounds - 2
        run_stage(rp, "select", lambda: _select(cfg, rp, take_all, len(ds.class_names)))
        run_stage(rp, "export", lambda: {"n_files": export_preannotations(
            rp.selection, rp.detections, rp.image_status, ds.class_names, rp.preannotations, round_idx,
            cfg.loop.labelstudio_document_root)})
        try:
            run_stage(rp, "oracle", lambda: labels.oracle(rp, ds, cfg.loop, cfg.seed, labels_uri))
        except labels.LabelsPending as pending:
            result.stopped_because = str(pending)
            break
        labels_uri = rp.labels
    else:
        result.stopped_because = f"{cfg.loop.rounds} rounds done"

    result.report = report.write_report(cfg.run_root)
    runs_root = paths.runs_root(cfg.run_root)
    report.compare_runs(runs_root, paths.comparison_dir(runs_root))
    print(f"Loop stopped: {result.stopped_because}. Report: {result.report}", flush=True)
    return result


def _stop_reason(cfg: Config, result: LoopResult, round_idx: int) -> str:
    if round_idx == cfg.loop.rounds - 1:
        return f"{cfg.loop.rounds} rounds done"
    gain, patience = cfg.loop.stop_min_gain, cfg.loop.stop_patience
    if gain is not None and len(result.map50) > patience:
        recent = result.map50[-1] - result.map50[-1 - patience]
        if recent < gain:
            return f"mAP50 gained {recent:.4f} < {gain} over the last {patience} rounds (seed 5.2.3)"
    return ""


# ---------------------------------------------------------------- stages


def _train(cfg: Config, ds: Dataset, labels_uri: str, rp: RoundPaths) -> dict:
    init_weights = cfg.model.weights
    if cfg.train.init == "previous" and rp.round_idx > 0:
        init_weights = RoundPaths(rp.run_root, rp.round_idx - 1).weights
    result = train_model(cfg, labels_uri, ds.pool_manifest, rp.checkpoint, ds.class_names,
                         init_weights=init_weights, max_pixels=cfg.score.max_pixels)
    return {"weights_uri": result.weights_uri, "best_val_map50": result.best_map50, "epochs": result.epochs}


def _evaluate(cfg: Config, ds: Dataset, labels_uri: str, perf_test: str, rp: RoundPaths) -> dict:
    def on(split: str, labels_of: str, manifest: str, out_uri: str) -> dict:
        return evaluate_split(cfg.eval, cfg.model, rp.weights, labels_of, manifest, split, out_uri,
                              ds.class_names, cfg.score.max_pixels)

    perf = on("perf_test", perf_test, ds.test_manifest, rp.metrics)
    test = on("test", labels_uri, ds.pool_manifest, rp.metrics_test)
    # Is loc_conf a predicted IoU? On val (ground truth known), for the detections the strategies see.
    calib = calibrate_split(cfg.model, rp.weights, labels_uri, ds.pool_manifest, "val", ds.class_names,
                            cfg.score.max_pixels, cfg.strategy.min_score, rp.calibration, rp.calibration_summary)
    return {"map50": perf["map50"], "test_map50": test["map50"], "splits": labels.split_counts(labels_uri),
            "val_spearman_loc_conf_true_iou": calib["spearman_loc_conf_true_iou"]}


def _select(cfg: Config, rp: RoundPaths, take_all: bool, num_classes: int) -> dict:
    if not take_all:
        return asdict(select_round(rp.detections, cfg.strategy, rp.round_idx, rp, num_classes))
    # Seed 6.6: the last selection takes every image left, without confidence filtering.
    n_images = _write_selection_of_all(rp.unlabelled, rp.round_idx, rp.selection)
    storage.write_table(schemas.empty(schemas.THRESHOLDS), rp.thresholds)
    return {"n_images": n_images, "take_all": True}


def _write_selection_of_all(manifest_uri: str, round_idx: int, out_uri: str) -> int:
    """Every image of `manifest_uri` as a selection row (class_id -1: selected by no class quota),
    streamed batch by batch: the last round's pool may be most of the dataset."""

    def rows() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in pool.iter_manifest(manifest_uri):
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays([
                pa.array(np.full(n, round_idx, np.int16)), batch.column("image_id"),
                pa.array(np.full(n, -1, np.int16)), pa.array(np.zeros(n, np.float32)),
                pa.array(np.arange(start, start + n, dtype=np.int32))], schema=schemas.SELECTION)
            start += n

    return storage.write_batches(rows(), out_uri, schemas.SELECTION)
