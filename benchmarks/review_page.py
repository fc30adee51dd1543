"""The review page at scale (issue 35): `raylib.review.write_review` on a take-all round of N images.

    python benchmarks/review_page.py --images 1000000
    python benchmarks/review_page.py --images 100000 --export    # and the export stage's own step, for scale

Builds a schema-true round in a scratch folder, part by part (parts of 20,000 images, as scoring writes
them): image_status, detections (3 an image over 5 classes, scores in (0.04, 1)) and a take-all
selection of every image (the largest selection a round makes), the images' URIs cycling over 8 real
640x480 JPEGs so that the shown thumbnails really decode. Then, with a local Ray of `--cpus` CPUs (the
loop's: past MIN_IMAGES_FOR_TASKS scored images the page is made in one Ray task per part):

  baseline   the I/O floor in this process: the same columns of every part read once, and the selection
             streamed once (what any page of the whole round has to read)
  review     write_review: the selection pass, a task per part (histograms, thumbnails), the page
  export     (--export) export_preannotations on the same round, before the page, as in the export stage
             (its tasks start the Ray workers that the page's tasks reuse; without it they start cold)

Printed: seconds, the ratio review / baseline, the page's and thumbnails' size, the driver's peak RSS.
"""
from __future__ import annotations

import argparse
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

from raylib import paths, review, schemas, storage  # noqa: E402
from raylib.paths import RoundPaths  # noqa: E402

CLASSES = [f"class_{n}" for n in range(5)]
PER_IMAGE = 3
PART = 20_000
IMAGE_FILES = 8


def build_round(rp: RoundPaths, images: int, image_dir: str, seed: int = 0) -> None:
    """image_status and detections parts, a take-all selection; URIs over IMAGE_FILES real JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(image_dir, exist_ok=True)
    files = []
    for k in range(IMAGE_FILES):
        files.append(os.path.join(image_dir, f"{k}.jpg"))
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), np.uint8)).save(files[-1], quality=90)
    ids = np.array([f"site{i % 7}/img_{i:08d}.jpg" for i in range(images)])
    for part, start in enumerate(range(0, images, PART)):
        mine, n = ids[start:start + PART], min(PART, images - start)
        status = pa.table({
            "round": pa.array(np.full(n, rp.round_idx, np.int16)), "image_id": mine, "status": ["ok"] * n,
            "error": pa.nulls(n, pa.string()), "n_detections": pa.array(np.full(n, PER_IMAGE, np.int32)),
            "width": pa.array(np.full(n, 640, np.int32)), "height": pa.array(np.full(n, 480, np.int32)),
            "uri": [files[i % IMAGE_FILES] for i in range(start, start + n)]})
        storage.write_table(schemas.check(status, schemas.IMAGE_STATUS, "image_status"),
                            paths.part_file(rp.image_status, part))
        m = n * PER_IMAGE
        cls_conf, loc_conf = rng.uniform(0.2, 1, m).astype(np.float32), rng.uniform(0.2, 1, m).astype(np.float32)
        x1, y1 = rng.uniform(0, 500, m).astype(np.float32), rng.uniform(0, 350, m).astype(np.float32)
        detections = pa.table({
            "round": pa.array(np.full(m, rp.round_idx, np.int16)), "image_id": np.repeat(mine, PER_IMAGE),
            "class_id": pa.array(rng.integers(0, len(CLASSES), m).astype(np.int16)), "cls_conf": cls_conf,
            "loc_conf": loc_conf, "score": cls_conf * loc_conf, "x1": x1, "y1": y1, "x2": x1 + 100, "y2": y1 + 100})
        storage.write_table(schemas.check(detections, schemas.DETECTIONS, "detections"),
                            paths.part_file(rp.detections, part))
    storage.write_table(pa.table({
        "round": pa.array(np.full(images, rp.round_idx, np.int16)), "image_id": ids,
        "class_id": pa.array(np.full(images, review.NO_CLASS, np.int16)),
        "score": pa.array(np.zeros(images, np.float32)), "rank": pa.array(np.arange(images, dtype=np.int32))},
        schema=schemas.SELECTION), rp.selection)


def read_floor(rp: RoundPaths) -> float:
    """Seconds to read what the page reads, once, in this process: the baseline."""
    started = time.perf_counter()
    for uri in storage.list_files(rp.image_status, ".parquet"):
        storage.read_table(uri, columns=["image_id", "status", "error", "width", "height", "uri"])
        storage.read_table(storage.join(rp.detections, uri.rsplit("/", 1)[-1]), columns=review.DETECTION_COLUMNS)
    for _ in storage.iter_parquet_batches(rp.selection, columns=["image_id", "class_id", "score", "rank"]):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--export", action="store_true", help="also time export_preannotations on the round")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)  # the child that builds inputs
    args = parser.parse_args()
    if args.make_only:
        build_round(RoundPaths(os.path.join(args.workdir, "run"), 3), args.images, os.path.join(args.workdir, "images"))
        return
    import ray

    import raylib.images  # noqa: F401  torch: imported before any timing, as in the loop's driver
    from raylib.export import export_preannotations
    from raylib.runtime import LOCAL_RAY_ENV

    workdir = args.workdir or tempfile.mkdtemp(prefix="review_page_")
    rp = RoundPaths(os.path.join(workdir, "run"), 3)
    try:
        started = time.perf_counter()
        # In a child: the driver's peak RSS is then the page's own (and the imports').
        subprocess.run([sys.executable, __file__, "--make-only", "--images", str(args.images), "--workdir", workdir],
                       check=True)
        print(f"inputs: {args.images} images, {args.images * PER_IMAGE} detections in "
              f"{time.perf_counter() - started:.1f} s (not timed)")
        os.environ.update(LOCAL_RAY_ENV)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
        floor = read_floor(rp)
        exported = None
        if args.export:  # first, as in the stage: its tasks start the workers the page's tasks then reuse
            started = time.perf_counter()
            export_preannotations(rp.selection, rp.detections, rp.image_status, CLASSES, rp.preannotations, 3)
            exported = time.perf_counter() - started
        started = time.perf_counter()
        summary = review.write_review(rp, CLASSES)
        took = time.perf_counter() - started
        thumbs = storage.list_files(storage.join(rp.review, "thumbs"))
        print(f"baseline (read once, this process): {floor:.2f} s; write_review: {took:.2f} s "
              f"(ratio {took / floor:.2f}x); {summary.n_thumbnails} thumbnails, {summary.n_placeholders} placeholders; "
              f"page {os.path.getsize(rp.review_page) / 1024:.1f} KiB, thumbnails "
              f"{sum(os.path.getsize(f) for f in thumbs) / 1024:.0f} KiB")
        if exported is not None:
            print(f"export_preannotations before it: {exported:.1f} s; the page adds {took / exported:.1%} to the stage")
        print(f"review_page: {args.images} images: review {took:.2f} s, {took / floor:.2f}x the read floor; "
              f"driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
