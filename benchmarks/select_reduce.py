"""Selection at scale: the streaming per-class reduce (raylib.select.select_round) against pandas.

    python benchmarks/select_reduce.py                         # 10^7 detections, 20 classes, k=100
    python benchmarks/select_reduce.py --rows 1000000 --files 4

Generates `--rows` detection rows (the DETECTIONS schema, no class_probs) in `--files` Parquet files:
about 8 detections per image, 20 classes with geometric imbalance, scores in (0, 1) with 5% below
min_score and many exact ties (scores rounded to 1e-4, as float32 outputs of a real model often are).
Then, each in its own fresh process so that peak memory is that path's alone:

  streamed   raylib.select.select_round: two streaming passes over the files, O(classes x k + selected)
  pandas     pd.read_parquet(image_id, class_id, score) of the whole round + select_per_class + budget:
             the in-memory reading of pseudo-code 2 (the baseline, and the reference it must equal)

Reported: wall seconds, peak RSS of the process (ru_maxrss) and its growth over the RSS right after
imports, and whether both paths selected the same (image, class) rows. Targets: < 30 s, < 1 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

CLASSES = 20
DETECTIONS_PER_IMAGE = 8


def rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def generate(folder: str, rows: int, files: int, seed: int = 0) -> None:
    """`rows` detections in `files` Parquet files, written file by file (bounded memory)."""
    from raylib import schemas, storage

    rng = np.random.default_rng(seed)
    n_images = max(1, rows // DETECTIONS_PER_IMAGE)
    weights = 0.8 ** np.arange(CLASSES)
    weights /= weights.sum()
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    for index in range(files):
        n = int(bounds[index + 1] - bounds[index])
        # Rows of one image sit together, as the scorer writes them.
        first_image = bounds[index] // DETECTIONS_PER_IMAGE
        image_index = first_image + np.arange(n) // DETECTIONS_PER_IMAGE
        ids = np.char.add("VOC/2012_", np.char.zfill(image_index.astype(str), 7))
        cls_conf = rng.uniform(0.3, 1.0, n).astype(np.float32)
        loc_conf = rng.uniform(0.3, 1.0, n).astype(np.float32)
        score = np.round(cls_conf * loc_conf, 4).astype(np.float32)
        x1 = rng.uniform(0, 400, n).astype(np.float32)
        y1 = rng.uniform(0, 300, n).astype(np.float32)
        table = pa.table({
            "round": pa.array(np.zeros(n, np.int16)),
            "image_id": pa.array(ids, pa.string()),
            "class_id": pa.array(rng.choice(CLASSES, n, p=weights).astype(np.int16)),
            "cls_conf": cls_conf, "loc_conf": loc_conf, "score": score,
            "x1": x1, "y1": y1, "x2": x1 + 50, "y2": y1 + 40,
        })
        storage.write_table(schemas.check(table, schemas.DETECTIONS, "detections"),
                            os.path.join(folder, f"part-{index:05d}.parquet"))
    assert n_images > 0


def measure(path: str, folder: str, out: str, k: int, budget: int | None) -> dict:
    """One path in this process: seconds, peak RSS, and the selected (image, class) pairs written to `out`."""
    import pandas as pd

    from raylib import storage
    from raylib.config import StrategyConfig
    from raylib.paths import RoundPaths
    from raylib.select import apply_budget, select_per_class, select_round

    strategy = StrategyConfig(k=k, min_score=0.2, budget=budget)
    base_rss = rss_mib()
    started = time.perf_counter()
    if path == "streamed":
        select_round(folder, strategy, 0, RoundPaths(out, 0), CLASSES)
        selection = storage.read_table(RoundPaths(out, 0).selection).to_pandas()
    else:
        frame = pd.read_parquet(folder, columns=["image_id", "class_id", "score"])
        selection = apply_budget(select_per_class(frame, k=strategy.k, min_score=strategy.min_score),
                                 strategy.budget)
        del frame
    seconds = time.perf_counter() - started
    pairs = sorted(zip(selection["image_id"], selection["class_id"].astype(int).tolist()))
    return {"path": path, "seconds": seconds, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base_rss,
            "rows": len(selection), "images": int(selection["image_id"].nunique()), "pairs": pairs}


def run_child(path: str, folder: str, scratch: str, k: int, budget: int | None) -> dict:
    """Run `measure` in a fresh interpreter so that its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", path, "--data", folder, "--scratch", scratch, "--k", str(k)]
    if budget:
        command += ["--budget", str(budget)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--child", choices=["streamed", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.data, args.scratch, args.k, args.budget)))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), python {platform.python_version()}, "
          f"pyarrow {pa.__version__}, load average {os.getloadavg()[0]:.2f}")
    root = tempfile.mkdtemp(prefix="select-bench-")
    try:
        folder = os.path.join(root, "detections")
        started = time.perf_counter()
        generate(folder, args.rows, args.files)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
        print(f"generated {args.rows:,} detections ({args.rows // DETECTIONS_PER_IMAGE:,} images, {CLASSES} "
              f"classes) in {args.files} files, {size:.0f} MiB, in {time.perf_counter() - started:.1f}s")
        results = [run_child("streamed", folder, os.path.join(root, "run"), args.k, args.budget)]
        if not args.skip_pandas:
            results.append(run_child("pandas", folder, os.path.join(root, "run"), args.k, args.budget))
        print(f"\n{'path':10s} {'seconds':>9s} {'peak RSS MiB':>13s} {'over imports':>13s} "
              f"{'rows/s':>12s} {'selected':>9s}")
        for r in results:
            print(f"{r['path']:10s} {r['seconds']:9.2f} {r['peak_rss_mib']:13.0f} "
                  f"{r['peak_rss_mib'] - r['base_rss_mib']:13.0f} {args.rows / r['seconds']:12,.0f} "
                  f"{r['images']:6d} img")
        if len(results) == 2:
            streamed, pandas = results
            print(f"same selection: {streamed['pairs'] == pandas['pairs']}")
            print(f"ratio streamed / pandas: time {streamed['seconds'] / pandas['seconds']:.2f}, "
                  f"peak RSS {streamed['peak_rss_mib'] / pandas['peak_rss_mib']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
