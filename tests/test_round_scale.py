"""The round-scale benchmark's smoke run (issue 23): it builds its inputs, runs its phases and ends with
the line the issue fixes. The benchmark itself is not a test; this small run is."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_round_scale_smoke_run():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "round_scale.py"), "--images", "2000",
                             "--baseline", "0", "--cpus", "2", "--coco"], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert any(re.fullmatch(r"ingest \(COCO, 1 files, .*\): [0-9.]+ s \([0-9.]+ ms an image\)", line) for line in lines), lines
    last = lines[-1]
    assert re.fullmatch(r"round_scale: 2000 images: export [0-9.]+ s, ingest (-|[0-9.]+) s, remaining (-|[0-9.]+) s, "
                        r"labelled-set [0-9.]+ s; driver peak RSS [0-9.]+ GiB", last), last
