"""A sweep (`jobs/loop.py -m`) where one point fails: the failure is reported for that point and the
other point still runs to the end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # one debug=fast round in a subprocess with its own Ray: ~1-2 min on 2 cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_point_does_not_stop_the_sweep(tmp_path):
    # data=voc fails at once (the generated folder has no trainval_2007 image set); synthetic runs.
    args = [sys.executable, os.path.join(ROOT, "jobs", "loop.py"), "-m", "debug=fast", "loop.rounds=1",
            "data=voc,synthetic", f"data.root={tmp_path}/data", f"run_root={tmp_path}/runs/" + "${data.kind}",
            f"hydra.sweep.dir={tmp_path}/sweep", "cluster.num_cpus=2"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    failed = (tmp_path / "sweep" / "failed_points.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith("sweep point [debug=fast loop.rounds=1 data=voc")
    assert "PoolError" in failed[0] and "trainval_2007" in failed[0]
    assert "Loop stopped: 1 rounds done" in out
    assert (tmp_path / "runs" / "synthetic" / "round=00" / "_done" / "evaluate").exists()
