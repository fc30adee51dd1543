"""Calibration of loc_conf on the performance test set: default objectness vs `model.iou_aware_obj=true`.

    python benchmarks/calibration_compare.py --round 0 \
        default=outputs/le_stable/runs/cls_iou_seed0,outputs/le_stable/runs/cls_iou_seed1 \
        iou_aware=outputs/le_iou/runs/cls_iou_seed0,outputs/le_iou/runs/cls_iou_seed1

Each run's model of round `--round` is calibrated (raylib.calibration) on the run's fixed performance test
set (hundreds of images, where the val split has 9-18), keeping detections >= `--min-score` as the
strategies do. Prints, per variant, Spearman of loc_conf and of cls_conf with true IoU per run and their
mean, and the pooled reliability table (mean true IoU per loc_conf bin, counts); `--out` writes markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pyarrow as pa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from raylib import calibration, paths  # noqa: E402
from raylib.config import EvalConfig, ModelConfig  # noqa: E402
from raylib.paths import RoundPaths  # noqa: E402


def calibrate_run(run_root: str, round_idx: int, min_score: float, input_size: int, out_dir: str,
                  variant: str) -> tuple[dict, pa.Table]:
    run = json.loads(open(paths.run_info(run_root)).read())
    rp = RoundPaths(run_root, round_idx)
    name = f"{variant}_{os.path.basename(run_root.rstrip('/'))}"
    summary = calibration.calibrate_split(
        EvalConfig(), ModelConfig(size=run["model"], input_size=input_size), rp.weights, paths.perf_test_labels(run_root),
        paths.test_manifest(run_root),
        "perf_test", run["classes"], 40_000_000, min_score,
        os.path.join(out_dir, f"{name}_round{round_idx}.parquet"), os.path.join(out_dir, f"{name}_round{round_idx}.json"))
    import pyarrow.parquet as pq

    return summary, pq.read_table(os.path.join(out_dir, f"{name}_round{round_idx}.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="name=run_root[,run_root...]")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--min-score", type=float, default=0.05)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--work", default="/tmp/calibration_compare")
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    lines = [f"Round {args.round} models on the performance test set, detections >= {args.min_score}.", "",
             "| variant | run | detections | IoU >= 0.5 | Spearman loc_conf | Spearman cls_conf | Spearman score | "
             "mean loc_conf | mean true IoU |", "|---|---|---|---|---|---|---|---|---|"]
    pooled = {}
    for spec in args.variants:
        name, _, roots = spec.partition("=")
        rows = []
        for root in roots.split(","):
            summary, table = calibrate_run(os.path.abspath(root), args.round, args.min_score, args.input_size, args.work,
                                           name)
            rows.append(summary)
            lines.append(f"| {name} | {os.path.basename(root)} | {summary['n_detections']} | {summary['n_matched_iou50']} | "
                         f"{summary['spearman_loc_conf_true_iou']} | {summary['spearman_cls_conf_true_iou']} | "
                         f"{summary['spearman_score_true_iou']} | {summary['mean_loc_conf']} | {summary['mean_true_iou']} |")
            bins = table.to_pylist()
            acc = pooled.setdefault(name, [[0, 0.0, 0.0] for _ in bins])
            for a, b in zip(acc, bins):
                if b["n"]:
                    a[0] += b["n"]
                    a[1] += b["n"] * b["mean_true_iou"]
                    a[2] += b["n"] * b["mean_loc_conf"]
        mean = {k: np.mean([r[k] for r in rows if r[k] is not None]) for k in
                ("spearman_loc_conf_true_iou", "spearman_cls_conf_true_iou", "spearman_score_true_iou")}
        lines.append(f"| **{name}** | mean of {len(rows)} | | | **{mean['spearman_loc_conf_true_iou']:.3f}** | "
                     f"{mean['spearman_cls_conf_true_iou']:.3f} | {mean['spearman_score_true_iou']:.3f} | | |")
    edges = calibration.BIN_EDGES
    lines += ["", "Pooled reliability: mean true IoU (count) per loc_conf bin", "",
              "| loc_conf bin | " + " | ".join(pooled) + " |", "|---|" + "---|" * len(pooled)]
    for i in range(len(edges) - 1):
        cells = [f"{a[i][1] / a[i][0]:.3f} ({a[i][0]})" if a[i][0] else "-" for a in pooled.values()]
        lines.append(f"| {edges[i]:.1f}-{edges[i + 1]:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
