"""The diversity strategies' selection at scale (issue 26): time and peak memory against cls_iou's.

    python benchmarks/diverse_selection.py --images 1000000     # the measurement (RESULTS.md)
    python benchmarks/diverse_selection.py --images 20000       # a quick look

Builds, in a child process and part by part, a round of N scored images as scoring writes it: detections
(3 per image over 20 classes, uniform scores) and embeddings (one unit vector of 448 float16 per image,
nano's width) in parts of 50,000 images. Then each selection runs in a fresh child process of its own, so
that its peak RSS (ru_maxrss) is its own:

  cls_iou           raylib.select.select_round: the seed's two streaming passes (the baseline: what the
                    round costs without diversity)
  cls_iou_diverse   the same passes with pool_factor x k candidates, then the candidates' embeddings
                    streamed from embeddings/ and k-center greedy per class

Printed: seconds and peak RSS of each, the ratio diverse / cls_iou, and what the candidates' embeddings
weigh (classes x pool_factor x k x d x 4 bytes) beside what the pool's would (N x d x 2 bytes): the
diverse selection's memory must follow the first, not the second.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLASSES = 20
DETECTIONS_PER_IMAGE = 3
DIM = 448  # YOLOX-nano's neck: 64 + 128 + 256
PART = 50_000


def build(root: str, images: int) -> None:
    from raylib import diversity, paths, schemas, storage
    from raylib.paths import RoundPaths

    rp = RoundPaths(root, 0)
    rng = np.random.default_rng(0)
    for index, start in enumerate(range(0, images, PART)):
        n = min(PART, images - start)
        ids = np.array([f"site{i % 97}/img{i:08d}.jpg" for i in range(start, start + n)], dtype=object)
        rows = n * DETECTIONS_PER_IMAGE
        boxes = {name: pa.array(np.full(rows, 1.0 + (name in ("x2", "y2")), np.float32)) for name in schemas.BOX}
        scores = rng.random(rows, dtype=np.float32)
        detections = pa.table({
            "round": pa.array(np.zeros(rows, np.int16)), "image_id": pa.array(np.repeat(ids, DETECTIONS_PER_IMAGE)),
            "class_id": pa.array(rng.integers(0, CLASSES, rows).astype(np.int16)),
            "cls_conf": pa.array(scores), "loc_conf": pa.array(np.ones(rows, np.float32)), "score": pa.array(scores),
            **boxes})
        storage.write_table(schemas.check(detections, schemas.DETECTIONS, "detections"),
                            paths.part_file(rp.detections, index))
        vectors = rng.standard_normal((n, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * DIM)
        embedding = pa.ListArray.from_arrays(offsets, pa.array(vectors.astype(np.float16).reshape(-1)))
        storage.write_table(schemas.check(pa.table({"image_id": pa.array(ids), "embedding": embedding}),
                                          schemas.EMBEDDINGS, "embeddings"), paths.part_file(rp.embeddings, index),
                            row_group_size=diversity.ROWS_PER_READ)  # as scoring writes them


def select(root: str, strategy: str, k: int, pool_factor: int) -> dict:
    from raylib.config import StrategyConfig
    from raylib.paths import RoundPaths
    from raylib.select import select_round

    rp = RoundPaths(root, 0)
    started = time.perf_counter()
    summary = select_round(rp.detections, StrategyConfig(name=strategy, k=k, min_score=0.2, pool_factor=pool_factor),
                           0, rp, CLASSES)
    return {"seconds": time.perf_counter() - started, "images": summary.n_images,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--pool-factor", type=int, default=4)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "build":
            build(args.child[1], int(args.child[2]))
            print(json.dumps({}))
        else:
            print(json.dumps(select(args.child[1], args.child[0], args.k, args.pool_factor)))
        return
    root = tempfile.mkdtemp(prefix="diverse_selection_")
    try:
        started = time.perf_counter()
        _in_child("--child", "build", root, str(args.images))
        print(f"inputs: {args.images:,} images, {args.images * DETECTIONS_PER_IMAGE:,} detections over {CLASSES} "
              f"classes, {args.images:,} embeddings of {DIM} float16 ({time.perf_counter() - started:.0f} s to build)")
        options = ["--k", str(args.k), "--pool-factor", str(args.pool_factor)]
        base = _in_child(*options, "--child", "cls_iou", root)
        diverse = _in_child(*options, "--child", "cls_iou_diverse", root)
        candidates = CLASSES * args.pool_factor * args.k
        print(f"cls_iou (baseline):  {base['seconds']:7.1f} s, peak RSS {base['peak_rss_mib']:6.0f} MiB, "
              f"{base['images']} images")
        print(f"cls_iou_diverse:     {diverse['seconds']:7.1f} s, peak RSS {diverse['peak_rss_mib']:6.0f} MiB, "
              f"{diverse['images']} images")
        print(f"embeddings held: candidates {candidates:,} x {DIM} x 4 B = {candidates * DIM * 4 / 2**20:.1f} MiB; "
              f"the pool's would be {args.images * DIM * 2 / 2**20:,.0f} MiB")
        print(f"diverse_selection: {args.images:,} images: diverse / cls_iou = {diverse['seconds'] / base['seconds']:.2f}x "
              f"time, {diverse['peak_rss_mib'] / base['peak_rss_mib']:.2f}x peak RSS")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
