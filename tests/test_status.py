"""jobs/status.py: a run's stages, durations, mAP50 per round and what is pending, from its files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from raylib import storage
from raylib.config import Config, LoopConfig
from raylib.paths import RoundPaths
from raylib.run_config import check_run_config
from raylib.status import format_status, run_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commit(run_root: str, round_idx: int, stage: str, seconds: float, **summary) -> None:
    storage.write_text(RoundPaths(run_root, round_idx).marker(stage), json.dumps({**summary, "seconds": seconds}))


def _half_done_run(tmp_path) -> str:
    run_root = str(tmp_path / "run")
    check_run_config(Config(run_root=run_root, loop=LoopConfig(rounds=3, seed_size=60)))
    for stage, seconds in [("train", 72.4), ("evaluate", 3.0), ("unlabelled", 0.5), ("score", 12.0),
                           ("select", 1.0), ("export", 2.0), ("oracle", 1.0)]:
        _commit(run_root, 0, stage, seconds, **({"map50": 0.1712} if stage == "evaluate" else {}))
    _commit(run_root, 1, "train", 3725.0)
    return run_root


def test_status_of_a_run_half_way(tmp_path):
    run_root = _half_done_run(tmp_path)
    config, rounds = run_status(run_root)
    assert config["loop"]["rounds"] == 3 and [r.round_idx for r in rounds] == [0, 1, 2]
    assert rounds[0].seconds["train"] == 72.4 and rounds[0].map50 == 0.1712 and rounds[0].pending == []
    assert rounds[1].pending == ["evaluate", "unlabelled", "score", "select", "export", "oracle"]
    assert rounds[2].pending == ["train", "evaluate"]  # the last round trains and evaluates only
    lines = format_status(run_root, config, rounds).splitlines()
    assert lines[0].startswith(f"{run_root}: synthetic data, YOLOX-s at 640, strategy cls_iou (k=100), seed 0, 3 rounds")
    assert lines[2].split() == ["0", "1m12s", "3s", "0s", "12s", "1s", "2s", "1s", "0.1712"]
    assert lines[3].split() == ["1", "1h02m", "-", "-", "-", "-", "-", "-"]
    assert lines[-1] == "pending: 8 stage(s), next: round 1 evaluate; 1h03m of stages done"


def test_status_job_prints_the_table(tmp_path):
    run_root = _half_done_run(tmp_path)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "status.py"), f"run_root={run_root}",
                           f"hydra.run.dir={tmp_path}/hydra"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0.1712" in done.stdout and "next: round 1 evaluate" in done.stdout
    empty = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "status.py"), f"run_root={tmp_path}/none",
                            f"hydra.run.dir={tmp_path}/hydra"], capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0 and "no run here yet" in empty.stdout
