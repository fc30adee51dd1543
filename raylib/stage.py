"""Commit protocol of a stage: outputs first, then a marker; a stage with a marker is never rerun."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from raylib import storage
from raylib.paths import RoundPaths

log = logging.getLogger(__name__)


def run_stage(rp: RoundPaths, stage: str, work: Callable[[], dict]) -> dict:
    """Run `work` unless its marker exists; the marker (with `work`'s summary) is written last."""
    marker = rp.marker(stage)
    if storage.exists(marker):
        log.info("round %d: %s already committed, skipping", rp.round_idx, stage)
        return json.loads(storage.read_text(marker))
    started = time.time()
    print(f"[round {rp.round_idx}] {stage} ...", flush=True)
    summary = work() or {}
    summary = {**summary, "seconds": round(time.time() - started, 2)}
    storage.write_text(marker, json.dumps(summary, default=str))
    print(f"[round {rp.round_idx}] {stage} done in {summary['seconds']:.1f}s: "
          f"{ {k: v for k, v in summary.items() if k != 'seconds'} }", flush=True)
    return summary
