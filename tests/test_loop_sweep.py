"""A sweep (`jobs/loop.py -m`) where one point fails: the failure is reported for that point and the
other point still runs to the end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # two debug=fast rounds in a subprocess with its own Ray: ~2 min on 2 cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_point_does_not_stop_the_sweep(tmp_path):
    """Also issue 13's option through the whole loop (one loop run serves both, CI time): the good point
    runs `model.iou_aware_obj=true train.init=previous` for two rounds, each with its calibration table
    on val and the report's calibration section."""
    import json

    from raylib.paths import RoundPaths

    # data=voc fails at once (the generated folder has no trainval_2007 image set); synthetic runs.
    args = [sys.executable, os.path.join(ROOT, "jobs", "loop.py"), "-m", "debug=fast", "loop.rounds=2",
            "loop.last_round_takes_all=false", "model.iou_aware_obj=true", "train.init=previous",
            "data=voc,synthetic", f"data.root={tmp_path}/data", f"run_root={tmp_path}/runs/" + "${data.kind}",
            f"hydra.sweep.dir={tmp_path}/sweep", "cluster.num_cpus=2"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    failed = (tmp_path / "sweep" / "failed_points.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith("sweep point [") and "data=voc" in failed[0]
    assert "PoolError" in failed[0] and "trainval_2007" in failed[0]
    assert "Loop stopped: 2 rounds done" in out
    run_root = str(tmp_path / "runs" / "synthetic")
    for r in range(2):
        rp = RoundPaths(run_root, r)
        assert os.path.exists(rp.marker("evaluate"))
        summary = json.loads(open(rp.calibration_summary).read())
        assert summary["split"] == "val" and summary["n_images"] > 0
        assert os.path.exists(rp.calibration)
    assert os.path.exists(RoundPaths(run_root, 0).detections)  # round 0's (IoU-aware) model scored the pool
    assert "## Calibration" in open(os.path.join(run_root, "report", "report.md")).read()
