"""How long a `ray.train.report` without a checkpoint blocks the training loop, with Ray Train's default
controller poll (the baseline) and with the local Ray's `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`
(raylib.runtime.LOCAL_RAY_ENV). Training reports every epoch, so this is the shortest an epoch can be.

    python benchmarks/train_report_cadence.py [--reports 30]

Each setting runs in a fresh local Ray (the controller reads the variable when it starts); one Ray Train
worker reports `--reports` times in a row, as fast as it can. The upper bound is a report that never
waits: ~0 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from raylib.runtime import LOCAL_RAY_ENV

VARIABLE = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

CHILD = """
import json, sys, time
import ray, ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

reports, storage = int(sys.argv[1]), sys.argv[2]

def loop(config):
    waits = []
    for i in range(reports):
        started = time.perf_counter()
        ray.train.report({"epoch": i})
        waits.append(time.perf_counter() - started)
    print("WAITS " + json.dumps(waits), file=sys.__stdout__, flush=True)

ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=True)
started = time.perf_counter()
TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
             run_config=RunConfig(storage_path=storage, name="cadence")).fit()
print("FIT " + json.dumps(time.perf_counter() - started), flush=True)
"""


def run(reports: int, interval: str | None, storage: str) -> tuple[float, float]:
    """(median seconds a report blocked, whole fit in seconds) in a fresh process and local Ray."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if interval is not None:
        env[VARIABLE] = interval
    out = subprocess.run([sys.executable, "-c", CHILD, str(reports), storage], env=env, capture_output=True,
                         text=True, timeout=600)
    waits = fit = None
    for line in out.stdout.splitlines():
        if "WAITS " in line:
            waits = sorted(json.loads(line.split("WAITS ", 1)[1]))
        if line.startswith("FIT "):
            fit = json.loads(line[4:])
    if waits is None or fit is None:
        raise SystemExit(f"the Ray Train run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return waits[len(waits) // 2], fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=30)
    parser.add_argument("--storage", default="/tmp/raylib_report_cadence")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; {args.reports} reports")
    default_wait, default_fit = run(args.reports, None, args.storage)
    ours_wait, ours_fit = run(args.reports, LOCAL_RAY_ENV[VARIABLE], args.storage)
    for name, wait, fit in [("Ray's default poll (2 s)", default_wait, default_fit),
                            (f"{VARIABLE}={LOCAL_RAY_ENV[VARIABLE]}", ours_wait, ours_fit)]:
        print(f"  {name:<40} report blocks {wait:.3f} s (median), fit {fit:.1f} s")
    print("  upper bound: a report that never waits, 0 s")
    print(f"  ratio blocked ours / default = {ours_wait / default_wait:.3f}; fit ours / default = {ours_fit / default_fit:.3f}")


if __name__ == "__main__":
    main()
