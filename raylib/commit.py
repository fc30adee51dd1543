"""A round's stages in order, and their commit protocol: outputs first, then a marker; a stage with a
marker is never rerun. The stages themselves are in raylib/stages.py."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from raylib import storage
from raylib.config import Config
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)

# A round's stages, in order: the one place the order is written (loop.py runs them, stages.BY_NAME names
# their functions, status.py lists them).
STAGES = ("train", "evaluate", "unlabelled", "score", "select", "export", "oracle")
LAST_ROUND_STAGES = STAGES[:2]  # the last round only trains and is evaluated
SEED_ROUND_STAGES = STAGES[-3:]  # annotators from round 0: the seed set is selected, exported and labelled


def run_stage(rp: RoundPaths, stage: str, work: Callable[[], dict]) -> dict:
    """Run `work` unless its marker exists; the marker (with `work`'s summary) is written last."""
    marker = rp.marker(stage)
    if storage.exists(marker):
        log.info("%s: %s already committed, skipping", rp.name, stage)
        return json.loads(storage.read_text(marker))
    started = time.time()
    log.info(f"[{rp.name}] {stage} ...")
    summary = work() or {}
    summary = {**summary, "seconds": round(time.time() - started, 2)}
    storage.write_text(marker, json.dumps(summary, default=str))
    log.info(f"[{rp.name}] {stage} done in {summary['seconds']:.1f}s: "
             f"{ {k: v for k, v in summary.items() if k != 'seconds'} }")
    return summary


def init_weights(cfg: Config, rp: RoundPaths) -> str | None:
    """Where round `rp.round_idx`'s training starts: `model.weights` (transfer, the seed's), or with
    `train.init=previous` the model of the round before (from round 1 on)."""
    if cfg.train.init == "previous" and rp.round_idx > 0:
        return RoundPaths(rp.run_root, rp.round_idx - 1).weights
    return cfg.model.weights


def scoring_weights(cfg: Config, rp: RoundPaths) -> str | None:
    """The round's trained model; `model.weights` only where this round was never trained (scoring a
    pool with given weights, outside a loop)."""
    return rp.weights if storage.exists(rp.weights) else cfg.model.weights


def takes_all(cfg: Config, round_idx: int) -> bool:
    """Seed 6.6: the selection before the last training takes every image left."""
    return cfg.loop.last_round_takes_all and round_idx == cfg.loop.rounds - 2
