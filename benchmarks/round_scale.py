"""A round at scale (issue 23): the non-model stages of a take-all round of N images.

    python benchmarks/round_scale.py --images 1000000          # inputs, the phases, the 10^4 baseline
    python benchmarks/round_scale.py --images 2000 --baseline 0  # the CI smoke run

Builds schema-true inputs in a scratch folder, part by part in a child process (bounded memory): the pool
manifest, scoring's detections (10 per image over 20 classes) and image_status (with sizes) in parts of
`--part-size` images as scoring writes them, and a take-all selection. Then, in this process (the driver,
with a local Ray of `--cpus` CPUs, as the loop runs), each phase of the round, timed in wall seconds:

  export        raylib.export.export_preannotations, every format (VOC XML, COCO, Label Studio, URIs, CVAT)
  ingest        the oracle's ingestion of the selection's VOC delivery (written by a child, not timed)
  remaining     raylib.pool.write_remaining of the pool less a labelled set of 90% of it
  labelled-set  (not measured here yet)

A phase is a function `(inputs) -> seconds`; one not measured prints `-`. The baseline: the export as it
was before its rewrite (`raylib/export.py` at BASELINE_COMMIT, copied to a temporary module) at
`--baseline` images, in a child process, and the per-image time ratio new / old. The last line is:

  round_scale: N images: export S s, ingest S s, remaining S s, labelled-set S s; driver peak RSS G GiB

Driver peak RSS is this process's ru_maxrss (inputs are made in a child, so it is the phases' own).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASELINE_COMMIT = "bea7f98e936810ec64057e264ce2349ec45213d6"  # the export before the vectorised rewrite
CLASSES = [f"class_{n:02d}" for n in range(20)]
DETECTIONS_PER_IMAGE = 10
ROUND = 3


@dataclass(frozen=True)
class Inputs:
    root: str
    images: int

    @property
    def pool(self) -> str:
        return os.path.join(self.root, "pool.parquet")

    @property
    def detections(self) -> str:
        return os.path.join(self.root, "round=03", "detections")

    @property
    def image_status(self) -> str:
        return os.path.join(self.root, "round=03", "image_status")

    @property
    def selection(self) -> str:
        return os.path.join(self.root, "round=03", "selection.parquet")

    def out(self, name: str) -> str:
        return os.path.join(self.root, "round=03", name)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ------------------------------------------------------------------------------------------- inputs


def build_inputs(inputs: Inputs, part_size: int, seed: int = 0) -> None:
    """Pool manifest, detections and image_status parts, take-all selection: written part by part."""
    import pyarrow.parquet as pq

    from raylib import paths, schemas

    rng = np.random.default_rng(seed)
    os.makedirs(inputs.detections, exist_ok=True)
    os.makedirs(inputs.image_status, exist_ok=True)
    pool = pq.ParquetWriter(inputs.pool, schemas.POOL, compression="zstd")
    selection = pq.ParquetWriter(inputs.selection, schemas.SELECTION, compression="zstd")
    for part, start in enumerate(range(0, inputs.images, part_size)):
        n = min(part_size, inputs.images - start)
        ids = pa.array([f"site{i % 7}/img_{i:08d}" for i in range(start, start + n)], pa.string())
        uris = pa.array([f"s3://pool-bucket/raw/site{i % 7}/img_{i:08d}.jpg" for i in range(start, start + n)])
        width = rng.integers(320, 1280, n).astype(np.int32)
        height = rng.integers(240, 960, n).astype(np.int32)
        pool.write_table(pa.table({"image_id": ids, "uri": uris, "width": width, "height": height}, schema=schemas.POOL))
        status = pa.table({
            "round": pa.array(np.full(n, ROUND, np.int16)), "image_id": ids, "status": pa.array(["ok"] * n),
            "error": pa.nulls(n, pa.string()), "n_detections": pa.array(np.full(n, DETECTIONS_PER_IMAGE, np.int32)),
            "width": width, "height": height, "uri": uris})
        pq.write_table(schemas.check(status, schemas.IMAGE_STATUS, "image_status"),
                       paths.part_file(inputs.image_status, part), compression="zstd")
        m = n * DETECTIONS_PER_IMAGE
        owner = np.repeat(np.arange(n), DETECTIONS_PER_IMAGE)
        w, h = width[owner].astype(np.float32), height[owner].astype(np.float32)
        x1, y1 = rng.uniform(0, 0.8, m).astype(np.float32) * w, rng.uniform(0, 0.8, m).astype(np.float32) * h
        x2 = np.minimum(x1 + rng.uniform(0.05, 0.5, m).astype(np.float32) * w, w)
        y2 = np.minimum(y1 + rng.uniform(0.05, 0.5, m).astype(np.float32) * h, h)
        cls_conf, loc_conf = rng.uniform(0.05, 1, m).astype(np.float32), rng.uniform(0.2, 1, m).astype(np.float32)
        detections = pa.table({
            "round": pa.array(np.full(m, ROUND, np.int16)), "image_id": ids.take(pa.array(owner)),
            "class_id": pa.array(rng.integers(0, len(CLASSES), m).astype(np.int16)),
            "cls_conf": cls_conf, "loc_conf": loc_conf, "score": cls_conf * loc_conf,
            "x1": x1, "y1": y1, "x2": x2, "y2": y2})
        pq.write_table(schemas.check(detections, schemas.DETECTIONS, "detections"),
                       paths.part_file(inputs.detections, part), compression="zstd")
        selection.write_table(pa.table({  # take-all: every image, under its most frequent class
            "round": pa.array(np.full(n, ROUND, np.int16)), "image_id": ids,
            "class_id": pa.array(rng.integers(0, len(CLASSES), n).astype(np.int16)),
            "score": pa.array(np.ones(n, np.float32)), "rank": pa.array(np.arange(start, start + n, dtype=np.int32))},
            schema=schemas.SELECTION))
    pool.close()
    selection.close()


# ------------------------------------------------------------------------------------------- phases


def export_phase(inputs: Inputs, module=None) -> float:
    """Every pre-annotation format of the take-all selection; `module`: another export module (baseline)."""
    if module is None:
        from raylib import export as module
    out = inputs.out("preannotations")
    start = time.perf_counter()
    written = module.export_preannotations(inputs.selection, inputs.detections, inputs.image_status, CLASSES, out,
                                           ROUND)
    seconds = time.perf_counter() - start
    assert written == inputs.images, (written, inputs.images)
    shutil.rmtree(out)
    return seconds


PHASES: dict[str, Callable[[Inputs], float] | None] = {
    "export": export_phase,
    "ingest": None,  # label ingestion of the oracle's VOC deliveries: to be added
    "remaining": None,  # the remaining pool
    "labelled-set": None,  # the labelled set's train split as training reads it
}


def _old_export_module(folder: str):
    source = subprocess.run(["git", "-C", ROOT, "show", f"{BASELINE_COMMIT}:raylib/export.py"], check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(folder, "export_before_rewrite.py")
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("export_before_rewrite", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)  # Ray's workers get its functions by value
    return module


def _start_ray(cpus: int) -> None:
    import ray

    from raylib.runtime import LOCAL_RAY_ENV

    os.environ.update(LOCAL_RAY_ENV)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})


def _child(args: argparse.Namespace) -> None:
    """--make: build the inputs; --baseline-run: time the old export on them (prints `baseline S`)."""
    inputs = Inputs(args.workdir, args.images)
    if args.make:
        build_inputs(inputs, args.part_size)
        return
    _start_ray(args.cpus)
    with tempfile.TemporaryDirectory() as folder:
        print(f"baseline {export_phase(inputs, _old_export_module(folder)):.3f} "
              f"rss {peak_rss_gib():.3f}", flush=True)


def _run_child(args: argparse.Namespace, images: int, workdir: str, *flags: str) -> str:
    command = [sys.executable, os.path.abspath(__file__), "--images", str(images), "--workdir", workdir,
               "--part-size", str(args.part_size), "--cpus", str(args.cpus), *flags]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--part-size", type=int, default=20_000, help="images per scoring part")
    parser.add_argument("--baseline", type=int, default=10_000, help="images of the baseline run (0: none)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="the local Ray's CPUs")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make or args.baseline_run:
        return _child(args)
    scratch = args.workdir or tempfile.mkdtemp(prefix="round_scale-")
    try:
        started = time.perf_counter()
        main_dir = os.path.join(scratch, f"n{args.images}")
        _run_child(args, args.images, main_dir, "--make")
        print(f"inputs: {args.images} images, {args.images * DETECTIONS_PER_IMAGE} detections in "
              f"{-(-args.images // args.part_size)} parts ({time.perf_counter() - started:.1f} s)", flush=True)
        baseline = None
        if args.baseline:
            base_dir = os.path.join(scratch, f"baseline-n{args.baseline}")
            _run_child(args, args.baseline, base_dir, "--make")
            out = _run_child(args, args.baseline, base_dir, "--baseline-run").split()
            baseline = float(out[out.index("baseline") + 1])
            print(f"baseline (export before the rewrite, {BASELINE_COMMIT[:7]}): {args.baseline} images: "
                  f"export {baseline:.1f} s ({1000 * baseline / args.baseline:.2f} ms/image), "
                  f"its driver peak RSS {float(out[out.index('rss') + 1]):.2f} GiB", flush=True)
            shutil.rmtree(base_dir)
        _start_ray(args.cpus)
        inputs = Inputs(main_dir, args.images)
        seconds = {name: phase(inputs) if phase else None for name, phase in PHASES.items()}
        if baseline is not None and seconds["export"] is not None:
            ratio = (seconds["export"] / args.images) / (baseline / args.baseline)
            print(f"export per image: {1000 * seconds['export'] / args.images:.3f} ms vs baseline "
                  f"{1000 * baseline / args.baseline:.3f} ms: ratio {ratio:.3f} ({1 / ratio:.1f}x faster)")
        times = ", ".join(f"{name} {'-' if s is None else f'{s:.1f}'} s" for name, s in seconds.items())
        print(f"round_scale: {args.images} images: {times}; driver peak RSS {peak_rss_gib():.2f} GiB")
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)



# ------------------------------------------------------------------------ ingest and remaining (issue 23)


def _write_delivery(inputs: Inputs, labels_in: str, labels_uri: str) -> None:
    """In a child process: the annotators' delivery of the take-all selection as VOC XML (3 objects an
    image, `voc.write_voc`), and a labelled set of 90% of the pool (ids only: what write_remaining reads)."""
    import pyarrow.parquet as pq

    from raylib import schemas, voc

    rng = np.random.default_rng(1)
    for batch in pq.ParquetFile(inputs.selection).iter_batches(columns=["image_id"]):
        for image_id in batch.column(0).to_pylist():
            x1, y1 = rng.integers(0, 200, 3), rng.integers(0, 150, 3)
            objects = [voc.VocObject(CLASSES[int(c)], float(a), float(b), float(a + 50), float(b + 40))
                       for c, a, b in zip(rng.integers(0, len(CLASSES), 3), x1, y1)]
            path = os.path.join(labels_in, "Annotations", f"{image_id}.xml")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(voc.write_voc(voc.VocAnnotation(image_id.rsplit("/", 1)[-1] + ".jpg", 640, 480,
                                                             objects=objects)))
    with pq.ParquetWriter(labels_uri, schemas.LABELS) as writer:
        for batch in pq.ParquetFile(inputs.pool).iter_batches(columns=["image_id"]):
            ids = batch.column(0).filter(pa.array(np.arange(batch.num_rows) % 10 != 0))
            n = len(ids)
            writer.write_table(pa.table([ids, pa.array(["train"] * n), pa.array(np.zeros(n, np.int16)),
                                         pa.array([[]] * n, pa.list_(schemas.OBJECT))], schema=schemas.LABELS))


def _delivery(inputs: Inputs) -> tuple[str, str]:
    """(labels_in, labels file) for `inputs`, written once by a child process (not timed)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    labels_in, labels_uri = inputs.out("delivery"), inputs.out("labels.parquet")
    if not os.path.exists(labels_uri):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(_write_delivery, inputs, labels_in, labels_uri).result()
    return labels_in, labels_uri


def ingest_phase(inputs: Inputs) -> float:
    """The oracle's ingestion of the VOC delivery (labels.oracle with loop.oracle=external): the selected
    ids, their URIs, `annotations.import_delivery` (Ray tasks of VOC_CHUNK files)."""
    from raylib import annotations, labels

    labels_in, _ = _delivery(inputs)
    start = time.perf_counter()
    selected = labels.selected_ids(inputs.selection)
    delivery = annotations.import_delivery("voc", labels_in, labels._selected_uris(inputs.pool, selected), CLASSES)
    seconds = time.perf_counter() - start
    assert delivery.labels.num_rows == inputs.images, (delivery.labels.num_rows, delivery.errors[:3])
    return seconds


def remaining_phase(inputs: Inputs) -> float:
    """The unlabelled stage (stages.unlabelled): the pool less a labelled set of 90% of it."""
    import pyarrow.parquet as pq

    from raylib import pool

    _, labels_uri = _delivery(inputs)
    start = time.perf_counter()
    n = pool.write_remaining(inputs.pool, labels_uri, inputs.out("unlabelled.parquet"))
    seconds = time.perf_counter() - start
    assert n == inputs.images - pq.read_metadata(labels_uri).num_rows, n
    return seconds


PHASES.update({"ingest": ingest_phase, "remaining": remaining_phase})


if __name__ == "__main__":
    main()
