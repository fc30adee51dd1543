"""The active-learning loop of the seed (5.2, 6.5-6.6), one round after another.

Round r:  train on the labelled set -> evaluate on the fixed performance test set -> score the
unlabelled pool -> select (per-class bottom-k; the last selection takes every image left) -> export
VOC pre-annotations -> oracle labels -> the labelled set of round r + 1.

Every stage writes its outputs under `<run_root>/round=NN/` (raylib/paths.py) and then a marker
`_done/<stage>`; re-running the same command skips committed stages and redoes the first uncommitted
one whole. All randomness is seeded from `cfg.seed`, so a resumed run selects what an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from raylib import labels, paths, report, stages, storage, tracking
from raylib.config import Config
from raylib.dataset import Dataset, ensure_dataset
from raylib.oracle import LabelsPending
from raylib.paths import RoundPaths
from raylib.run_config import check_run_config
from raylib.commit import SEED_ROUND_STAGES, STAGES, run_stage

log = logging.getLogger(__name__)


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
    tracking.require_tracking(cfg)
    check_run_config(cfg)
    ds = ensure_dataset(cfg)
    report.write_run_info(cfg.run_root, cfg, ds.class_names)
    labels.perf_test_labels(cfg.run_root, ds)
    tracking.start_run(cfg)
    try:
        result = _rounds(cfg, ds)
    except BaseException:
        with contextlib.suppress(Exception):  # the run's own error is the one to show
            tracking.end_run(cfg, "FAILED")
        raise
    tracking.end_run(cfg)
    runs_root = paths.runs_root(cfg.run_root)
    report.compare_runs(runs_root, paths.comparison_dir(runs_root))
    log.info(f"Loop stopped: {result.stopped_because}. Report: {result.report}")
    return result


def _rounds(cfg: Config, ds: Dataset) -> LoopResult:
    """The seed set, then each round's stages (commit.STAGES: train, evaluate, unlabelled, score, select,
    export, oracle) until a stop rule, an empty pool or a pending delivery ends the loop."""
    result = LoopResult(run_root=cfg.run_root, rounds_done=0)
    if labels.seed_from_annotators(ds, cfg.loop):  # the seed set goes to the annotators as a round's selection
        result.stopped_because = _run_stages(cfg, ds, RoundPaths(cfg.run_root, paths.SEED_ROUND),
                                             SEED_ROUND_STAGES, result)
    else:
        labels.seed_labels(cfg.run_root, ds, cfg.loop, cfg.seed, lambda: stages.seed_ids(cfg, ds))
    for round_idx in range(cfg.loop.rounds if not result.stopped_because else 0):
        result.stopped_because = _run_stages(cfg, ds, RoundPaths(cfg.run_root, round_idx), STAGES, result)
        if result.stopped_because:
            break
    result.report = report.write_report(cfg.run_root)
    return result


def _run_stages(cfg: Config, ds: Dataset, rp: RoundPaths, names: tuple[str, ...], result: LoopResult) -> str:
    """Round `rp`'s stages `names`, in order; '' when they all ran, else why the loop stops here."""
    n_labelled = (storage.read_table(stages.labelled_set(cfg, ds, rp), columns=["image_id"]).num_rows
                  if rp.round_idx != paths.SEED_ROUND else 0)
    for name in names:
        try:
            summary = run_stage(rp, name, lambda: stages.BY_NAME[name](cfg, ds, rp))
        except LabelsPending as pending:  # the annotators are not done: a rerun resumes here
            return str(pending)
        if name == "evaluate":
            _record_round(cfg, ds, rp, summary, n_labelled, result)
            stop = _stop_reason(cfg, result, rp.round_idx)
            if stop:
                return stop
        if name == "unlabelled" and summary["n_images"] == 0:
            return "the pool is empty"
    return ""


def _record_round(cfg: Config, ds: Dataset, rp: RoundPaths, metrics: dict, n_labelled: int,
                  result: LoopResult) -> None:
    """An evaluated round: its point on the curve, the report, and the logger's scalars and plots."""
    tracking.log_round(cfg, rp, ds.class_names, metrics)  # logger=tensorboard|mlflow: the round's curves
    result.rounds_done = rp.round_idx + 1
    result.map50.append(metrics["map50"])
    result.labelled.append(n_labelled)
    report.write_report(cfg.run_root)
    tracking.log_report(cfg, paths.report_dir(cfg.run_root))  # logger=mlflow: the report's PNGs


def _stop_reason(cfg: Config, result: LoopResult, round_idx: int) -> str:
    if round_idx == cfg.loop.rounds - 1:
        return f"{cfg.loop.rounds} rounds done"
    gain, patience = cfg.loop.stop_min_gain, cfg.loop.stop_patience
    if gain is not None and len(result.map50) > patience:
        recent = result.map50[-1] - result.map50[-1 - patience]
        if recent < gain:
            return f"mAP50 gained {recent:.4f} < {gain} over the last {patience} rounds (seed 5.2.3)"
    return ""
