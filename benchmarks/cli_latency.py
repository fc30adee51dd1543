"""How long the CLI takes to answer: `jobs/loop.py --help`, `jobs/check.py experiment=demo`, `--cfg job`.

    .venv/bin/python benchmarks/cli_latency.py            # best of 3 each, wall seconds

Baseline, measured in the same run: the job as it was written before (the stage modules, torch,
torchvision and Ray Data imported at the top of the script, Hydra's own `--help`), built in a temporary
copy of jobs/ and conf/. Floor: the interpreter importing Hydra and nothing else.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EAGER_LOOP_JOB = '''import hydra
from _job import start, sweep_point
from omegaconf import DictConfig

from raylib.loop import run_loop


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sweep_point(lambda: run_loop(start(cfg)))


if __name__ == "__main__":
    main()
'''


def best_of(args: list[str], runs: int = 3, env: dict | None = None) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr[-2000:]
    return min(times)


def main() -> None:
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "jobs"), os.path.join(tmp, "jobs"))
        shutil.copytree(os.path.join(ROOT, "conf"), os.path.join(tmp, "conf"))
        with open(os.path.join(tmp, "jobs", "loop_eager.py"), "w") as handle:
            handle.write(EAGER_LOOP_JOB)
        env = {**os.environ, "PYTHONPATH": ROOT}
        hydra_dir = f"hydra.run.dir={tmp}/hydra"
        rows = [
            ("jobs/loop.py --help", best_of([python, "jobs/loop.py", "--help"]),
             best_of([python, os.path.join(tmp, "jobs", "loop_eager.py"), "--help"], env=env)),
            ("jobs/loop.py --cfg job", best_of([python, "jobs/loop.py", "--cfg", "job", hydra_dir]),
             best_of([python, os.path.join(tmp, "jobs", "loop_eager.py"), "--cfg", "job", hydra_dir], env=env)),
            ("jobs/check.py experiment=demo",
             best_of([python, "jobs/check.py", "experiment=demo", f"run_root={tmp}/run", hydra_dir]), None),
        ]
    floor = best_of([python, "-c", "import hydra"])
    print(f"{'command':34s} {'now (s)':>8s} {'before (s)':>11s} {'ratio':>7s}   (best of 3; floor: python + "
          f"import hydra = {floor:.2f} s)")
    for name, now, before in rows:
        ratio = f"{now / before:.3f}x" if before else "-"
        print(f"{name:34s} {now:8.2f} {before if before is not None else float('nan'):11.2f} {ratio:>7s}")


if __name__ == "__main__":
    main()
