"""A round at scale (issue 23): the non-model stages of a take-all round of N images.

    python benchmarks/round_scale.py --images 1000000          # inputs, the phases, the 10^4 baseline
    python benchmarks/round_scale.py --images 2000 --baseline 0  # the CI smoke run

Builds schema-true inputs in a scratch folder, part by part in a child process (bounded memory): the pool
manifest, scoring's detections (10 per image over 20 classes) and image_status (with sizes) in parts of
`--part-size` images as scoring writes them, and a take-all selection. Then, in this process (the driver,
with a local Ray of `--cpus` CPUs, as the loop runs), each phase of the round, timed in wall seconds:

  export        raylib.export.export_preannotations, every format (VOC XML, COCO, Label Studio, URIs, CVAT)
  ingest        the oracle (oracle.label_selection, as the loop runs it: one Ray task) on the selection's VOC
                delivery (written by a child, not timed): ids, URIs and sizes, parsing, splits, the labelled
                set written; the oracle task's peak RSS printed apart. With --coco, printed apart: the same
                as COCO files of --part-size images, every box checked against its image's size in image_status
  remaining     raylib.pool.write_remaining of the pool less a labelled set of 90% of it
  labelled-set  the training stage's reading of the labelled set's train split: every rank's shard of
                TRAIN_WORKERS (URIs, targets, image sizes: train_data.load_split) on a labelled set of the
                N images (70/15/15, 3 boxes an image) whose URIs are IMAGE_FILES real JPEGs (written by a
                child, not timed); without the copies into the image cache (the storage's speed) or training

Then, printed apart from the last line, the evaluation of the test split (15% of N images, their 10
detections each): AP50 (metrics.ap50_per_class, with labels_to_ground_truth) and calibration's matching
(calibration.calibration_summary). All N images' detections in one frame would not fit the driver at 10^6.

A phase is a function `(inputs) -> seconds`; one not measured prints `-` (`--phases` picks some). The
baseline, at `--baseline` images in a child process: the export as it was before its rewrite
(`raylib/export.py` at EXPORT_BASELINE), the oracle as it was before the ingestion work (`raylib/{labels,
annotations}.py` at INGEST_BASELINE), the labelled set and the evaluation as they were before theirs
(`raylib/{train_data,labels,pool,metrics,calibration}.py` at LABELLED_SET_BASELINE), each copied from git
to a temporary module; then the per-image time ratio new / old. The last line is:

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

EXPORT_BASELINE = "bea7f98e936810ec64057e264ce2349ec45213d6"  # the export before the vectorised rewrite
# The labelled set's reading (a full decode per image for its size, a manifest scan into a dict, a Python
# dict per box) and the per-detection matching loops of metrics.py / calibration.py, before issue 23.
LABELLED_SET_BASELINE = "2ad4f3eadc5f9df7082d300105375dbdd55b1599"
# The oracle before issue 23's ingestion work: the selection and its URIs as Python dicts, the VOC files
# parsed one after another on the driver into a dict per box, the splits assigned per image in Python.
INGEST_BASELINE = "87244d2e70fd2562f0a14d43cba1a627402582b5"
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
    "ingest": None,  # label ingestion of the oracle's VOC deliveries (below)
    "remaining": None,  # the remaining pool (below)
    "labelled-set": None,  # the labelled set's train split as training reads it (below)
}
# A phase's code before its rewrite, `(inputs, scratch folder) -> seconds`, timed by the baseline child.
BASELINES: dict[str, Callable[[Inputs, str], float]] = {
    "export": lambda inputs, folder: export_phase(inputs, _module_at(EXPORT_BASELINE, "raylib/export.py", folder)),
    "ingest": lambda inputs, folder: _ingest_baseline(inputs, folder),
}


def _module_at(commit: str, path: str, folder: str, **replaced):
    """`path` (raylib/x.py) as it was at `commit`, imported as a module of its own; `replaced`: module
    globals to swap after import (its imports of other old modules)."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:{path}"], check=True, capture_output=True,
                            text=True).stdout
    name = f"{os.path.splitext(os.path.basename(path))[0]}_at_{commit[:7]}"
    file = os.path.join(folder, f"{name}.py")
    with open(file, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for key, value in replaced.items():
        setattr(module, key, value)
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
    """--make: build the inputs; --baseline-run: time the old code of the chosen phases on them (prints
    `baseline <phase> S` lines, then `rss G`)."""
    inputs = Inputs(args.workdir, args.images)
    if args.make:
        build_inputs(inputs, args.part_size)
        return
    _start_ray(args.cpus)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.phases.split(","):
            if name in BASELINES:
                print(f"baseline {name} {BASELINES[name](inputs, folder):.3f}", flush=True)
        if "labelled-set" in args.phases.split(","):
            old = _evaluation_modules_at(LABELLED_SET_BASELINE, folder)
            ap_seconds, matching_seconds, n_detections = evaluation(inputs, *old)
            print(f"baseline ap {ap_seconds:.3f}\nbaseline matching {matching_seconds:.3f}\n"
                  f"evaluated {n_detections}", flush=True)
    print(f"rss {peak_rss_gib():.3f}", flush=True)


def _run_child(args: argparse.Namespace, images: int, workdir: str, *flags: str) -> str:
    command = [sys.executable, os.path.abspath(__file__), "--images", str(images), "--workdir", workdir,
               "--part-size", str(args.part_size), "--cpus", str(args.cpus), "--phases", args.phases, *flags]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--part-size", type=int, default=20_000, help="images per scoring part")
    parser.add_argument("--baseline", type=int, default=10_000, help="images of the baseline run (0: none)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="the local Ray's CPUs")
    parser.add_argument("--phases", default=",".join(PHASES), help="the phases to run, comma-separated "
                        f"(default: all of {','.join(PHASES)}); the others print -")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--coco", action="store_true", help="also ingest the delivery as COCO files of "
                        "--part-size images (printed apart from the last line)")
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.phases.split(",")) - set(PHASES):
        parser.error(f"--phases: no phase {sorted(unknown)}; the phases are {','.join(PHASES)}")
    if args.make or args.baseline_run:
        return _child(args)
    scratch = args.workdir or tempfile.mkdtemp(prefix="round_scale-")
    try:
        started = time.perf_counter()
        main_dir = os.path.join(scratch, f"n{args.images}")
        _run_child(args, args.images, main_dir, "--make")
        print(f"inputs: {args.images} images, {args.images * DETECTIONS_PER_IMAGE} detections in "
              f"{-(-args.images // args.part_size)} parts ({time.perf_counter() - started:.1f} s)", flush=True)
        baseline: dict[str, float] = {}
        evaluated = 0
        if args.baseline:
            base_dir = os.path.join(scratch, f"baseline-n{args.baseline}")
            _run_child(args, args.baseline, base_dir, "--make")
            lines = [line.split() for line in _run_child(args, args.baseline, base_dir, "--baseline-run").splitlines()]
            baseline = {words[1]: float(words[2]) for words in lines if words[:1] == ["baseline"]}
            rss = next(float(words[1]) for words in lines if words[:1] == ["rss"])
            evaluated = next((int(words[1]) for words in lines if words[:1] == ["evaluated"]), 0)
            print(f"baseline ({args.baseline} images; export at {EXPORT_BASELINE[:7]}, ingest at {INGEST_BASELINE[:7]}, "
                  f"the rest at {LABELLED_SET_BASELINE[:7]}): " + ", ".join(f"{name} {s:.1f} s" for name, s in baseline.items())
                  + f"; its driver peak RSS {rss:.2f} GiB", flush=True)
            shutil.rmtree(base_dir)
        _start_ray(args.cpus)
        inputs = Inputs(main_dir, args.images)
        chosen = args.phases.split(",")
        seconds = {name: phase(inputs) if phase and name in chosen else None for name, phase in PHASES.items()}
        for name, new in seconds.items():
            if name in baseline and new is not None:
                _print_ratio(name, new / args.images, baseline[name] / args.baseline, "image")
        if "labelled-set" in chosen:
            ap_seconds, matching_seconds, n_detections = evaluation(inputs)
            print(f"evaluate: test split, {n_detections} detections: AP50 {ap_seconds:.1f} s, calibration "
                  f"matching {matching_seconds:.1f} s", flush=True)
            if "ap" in baseline:
                _print_ratio("AP50", ap_seconds / n_detections, baseline["ap"] / evaluated, "detection")
                _print_ratio("calibration matching", matching_seconds / n_detections,
                             baseline["matching"] / evaluated, "detection")
        if args.coco:
            coco_seconds, n_files = ingest_coco(inputs, args.part_size)
            print(f"ingest (COCO, {n_files} files, boxes checked against image_status's sizes): {coco_seconds:.1f} s "
                  f"({1000 * coco_seconds / args.images:.3f} ms an image)", flush=True)
        times = ", ".join(f"{name} {'-' if s is None else f'{s:.1f}'} s" for name, s in seconds.items())
        print(f"round_scale: {args.images} images: {times}; driver peak RSS {peak_rss_gib():.2f} GiB")
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)


def _print_ratio(name: str, new: float, old: float, unit: str) -> None:
    ratio = new / old
    print(f"{name} per {unit}: {1000 * new:.4f} ms vs baseline {1000 * old:.4f} ms: ratio {ratio:.3f} "
          f"({1 / ratio:.1f}x faster)", flush=True)


# ------------------------------------------------------------------------ ingest and remaining (issue 23)


def _write_delivery(inputs: Inputs, labels_in: str, labels_uri: str) -> None:
    """In a child process: the annotators' delivery of the take-all selection as VOC XML (3 objects an
    image, `voc.write_voc`), and a labelled set of 90% of the pool (ids only: what write_remaining reads)."""
    import pyarrow.parquet as pq

    from raylib import schemas
    from raylib.formats import voc

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

    # Not "labels.parquet" nor "unlabelled.parquet": those are the round's own (RoundPaths), which the
    # ingest phase's oracle writes and reads.
    labels_in, labels_uri = inputs.out("delivery"), inputs.out("labelled_90pct.parquet")
    if not os.path.exists(labels_uri):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(_write_delivery, inputs, labels_in, labels_uri).result()
    return labels_in, labels_uri


def ingest_phase(inputs: Inputs) -> float:
    """The oracle as the loop runs it with loop.oracle=external (oracle.label_selection: one Ray task, the parsing in
    Ray tasks of TASK_CHUNK files): the selected ids, their URIs and sizes, the VOC delivery, the splits,
    the labelled set written. The oracle task's peak RSS is printed apart (it is not the driver's)."""
    from raylib import oracle
    from raylib.config import LoopConfig
    from raylib.dataset import Dataset
    from raylib.paths import RoundPaths

    labels_in, _ = _delivery(inputs)
    rp = RoundPaths(inputs.root, ROUND)
    assert rp.selection == inputs.selection and rp.image_status == inputs.image_status
    ds = Dataset(pool_manifest=inputs.pool, test_manifest="", class_names=CLASSES)
    loop = LoopConfig(oracle="external", labels_in=labels_in, labels_format="voc")
    with _TaskMemory("ray::_label_selection") as task:
        start = time.perf_counter()
        counts = oracle.label_selection(rp, ds, loop, seed=0, labels_uri=None)
        seconds = time.perf_counter() - start
    assert counts["n_labelled"] == inputs.images, counts
    print(f"ingest: the oracle task's peak RSS {task.peak_gib:.2f} GiB (sampled every {task.interval} s)", flush=True)
    return seconds


def _ingest_baseline(inputs: Inputs, folder: str) -> float:
    """`ingest_phase`'s work by the oracle at INGEST_BASELINE (its labels.py and annotations.py), on the
    driver as it ran then; it needs a labelled set to add to: an empty one."""
    from raylib import schemas, storage
    from raylib.config import LoopConfig
    from raylib.dataset import Dataset
    from raylib.paths import RoundPaths

    old_annotations = _module_at(INGEST_BASELINE, "raylib/annotations.py", folder)
    old_labels = _module_at(INGEST_BASELINE, "raylib/labels.py", folder, annotations=old_annotations)
    labels_in, _ = _delivery(inputs)
    nothing = os.path.join(folder, "no_labels.parquet")
    storage.write_table(schemas.empty(schemas.LABELS), nothing)
    ds = Dataset(pool_manifest=inputs.pool, test_manifest="", class_names=CLASSES)
    loop = LoopConfig(oracle="external", labels_in=labels_in, labels_format="voc")
    start = time.perf_counter()
    counts = old_labels.oracle(RoundPaths(inputs.root, ROUND), ds, loop, 0, nothing)
    seconds = time.perf_counter() - start
    assert counts["n_labelled"] == inputs.images, counts
    return seconds


class _TaskMemory:
    """The peak RSS of the processes running a Ray task, by its process title, sampled in a thread."""

    def __init__(self, title: str, interval: float = 0.25):
        self.title, self.interval, self.peak_gib = title, interval, 0.0
        self._stop = None

    def __enter__(self) -> "_TaskMemory":
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.interval):
            for process in psutil.process_iter(["cmdline"]):
                try:
                    if self.title in " ".join(process.info["cmdline"] or ()):
                        self.peak_gib = max(self.peak_gib, process.memory_info().rss / 2**30)
                except psutil.Error:
                    pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def remaining_phase(inputs: Inputs) -> float:
    """The unlabelled stage (stages.unlabelled, one Ray task): the pool less a labelled set of 90% of it."""
    import pyarrow.parquet as pq

    from raylib import pool, runtime

    _, labels_uri = _delivery(inputs)
    start = time.perf_counter()
    n = runtime.in_task(pool.write_remaining, inputs.pool, labels_uri, inputs.out("remaining.parquet"))  # as stages.unlabelled
    seconds = time.perf_counter() - start
    assert n == inputs.images - pq.read_metadata(labels_uri).num_rows, n
    return seconds


def _write_coco_delivery(inputs: Inputs, labels_in: str, part_size: int) -> None:
    """In a child process: the same kind of delivery as COCO, one file per `part_size` selected images (as
    the export writes them at scale, and as CVAT exports per task), 3 boxes an image."""
    import json

    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    categories = [{"id": n + 1, "name": name} for n, name in enumerate(CLASSES)]
    os.makedirs(labels_in, exist_ok=True)
    for part, batch in enumerate(pq.ParquetFile(inputs.selection).iter_batches(batch_size=part_size, columns=["image_id"])):
        images, annotations = [], []
        for image_id in batch.column(0).to_pylist():
            images.append({"id": len(images) + 1, "file_name": image_id + ".jpg", "width": 640, "height": 480})
            for c, x, y in zip(rng.integers(0, len(CLASSES), 3), rng.integers(0, 200, 3), rng.integers(0, 150, 3)):
                annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": int(c) + 1,
                                    "bbox": [int(x), int(y), 50, 40], "area": 2000, "iscrowd": 0})
        with open(os.path.join(labels_in, f"part-{part:05d}.json"), "w") as handle:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)


def ingest_coco(inputs: Inputs, part_size: int) -> tuple[float, int]:
    """(seconds, files) of the oracle (oracle.label_selection, as `ingest_phase`) on the COCO delivery of the
    take-all selection: URIs from the pool, image sizes from image_status (one join; boxes are checked
    against them), one Ray task per file for the parsing."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from raylib import oracle
    from raylib.config import LoopConfig
    from raylib.dataset import Dataset
    from raylib.paths import RoundPaths

    labels_in = inputs.out("delivery_coco")
    if not os.path.isdir(labels_in):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(_write_coco_delivery, inputs, labels_in, part_size).result()
    ds = Dataset(pool_manifest=inputs.pool, test_manifest="", class_names=CLASSES)
    start = time.perf_counter()
    counts = oracle.label_selection(RoundPaths(inputs.root, ROUND), ds,
                           LoopConfig(oracle="external", labels_in=labels_in, labels_format="coco"), 0, None)
    seconds = time.perf_counter() - start
    assert counts["n_labelled"] == inputs.images, counts
    return seconds, len(os.listdir(labels_in))


PHASES.update({"ingest": ingest_phase, "remaining": remaining_phase})


# -------------------------------------------------------------------------------- labelled set (issue 23)

TRAIN_WORKERS = 4  # the ranks whose shards the labelled-set phase builds (a node of 4 GPUs)
IMAGE_FILES = 64  # distinct JPEGs behind the labelled set's URIs (sizes as the pool's)
BOXES_PER_IMAGE = 3


def _write_labelled_set(inputs: Inputs, folder: str, labels_uri: str, manifest_uri: str) -> None:
    """In a child process: IMAGE_FILES JPEGs, a manifest of the pool's ids over them (width/height null, as
    pool indexing writes them), and labels of every pool image: split 70/15/15 by position, its first
    BOXES_PER_IMAGE detections moved by a few pixels as its boxes (5% difficult), so AP has hits to find."""
    import cv2
    import pyarrow.parquet as pq

    from raylib import schemas, storage

    rng = np.random.default_rng(2)
    os.makedirs(folder, exist_ok=True)
    files = []
    for k in range(IMAGE_FILES):  # smooth random scenes: a photo's decode cost, not a flat colour's
        width, height = int(rng.integers(320, 1280)), int(rng.integers(240, 960))
        small = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))
        files.append(os.path.join(folder, f"image_{k:02d}.jpg"))
        cv2.imwrite(files[-1], image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    manifest = pq.ParquetWriter(manifest_uri, schemas.POOL, compression="zstd")
    labels = pq.ParquetWriter(labels_uri, schemas.LABELS, compression="zstd")
    start = 0
    for detections in storage.iter_parquet_batches(  # whole images: a part holds 10 rows per image
            inputs.detections, ["image_id", "class_id", "x1", "y1", "x2", "y2"], batch_size=6_000 * DETECTIONS_PER_IMAGE):
        first = np.arange(detections.num_rows) % DETECTIONS_PER_IMAGE < BOXES_PER_IMAGE
        boxes = detections.filter(pa.array(first))
        ids = detections.column("image_id").take(pa.array(np.arange(0, detections.num_rows, DETECTIONS_PER_IMAGE)))
        n, m = len(ids), boxes.num_rows
        position = np.arange(start, start + n)
        nulls = pa.nulls(n, pa.int32())
        manifest.write_table(pa.table([ids, pa.array([files[i % IMAGE_FILES] for i in position]), nulls, nulls],
                                      schema=schemas.POOL))
        moved = {name: pa.array(boxes.column(name).to_numpy() + rng.normal(0, 2, m).astype(np.float32))
                 for name in ("x1", "y1", "x2", "y2")}
        objects = pa.StructArray.from_arrays(
            [boxes.column("class_id"), *moved.values(), pa.array(rng.random(m) < 0.05)],
            fields=list(schemas.OBJECT))
        split = np.where(position % 20 < 14, "train", np.where(position % 20 < 17, "val", "test"))
        labels.write_table(pa.table([ids, pa.array(split), pa.array(np.zeros(n, np.int16)),
                                     pa.ListArray.from_arrays(pa.array(np.arange(0, m + 1, BOXES_PER_IMAGE, dtype=np.int32)),
                                                              objects)], schema=schemas.LABELS))
        start += n
    manifest.close()
    labels.close()


def _labelled_set(inputs: Inputs) -> tuple[str, str]:
    """(labels file, manifest over real images) for `inputs`, written once by a child process (not timed)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    labels_uri, manifest_uri = inputs.out("labelled_set.parquet"), inputs.out("labelled_manifest.parquet")
    if not os.path.exists(labels_uri):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(_write_labelled_set, inputs, inputs.out("images"), labels_uri, manifest_uri).result()
    return labels_uri, manifest_uri


def labelled_set_phase(inputs: Inputs, train_data=None) -> float:
    """Every rank's shard of the train split as the training workers build it (`load_split`), in turn;
    `train_data`: another train_data module (baseline)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if train_data is None:
        from raylib.training import data as train_data
    labels_uri, manifest_uri = _labelled_set(inputs)
    start = time.perf_counter()
    shards = [len(train_data.load_split(labels_uri, manifest_uri, "train", rank, TRAIN_WORKERS)[0])
              for rank in range(TRAIN_WORKERS)]
    seconds = time.perf_counter() - start
    split = pq.read_table(labels_uri, columns=["split"]).column("split")
    assert sum(shards) == pc.sum(pc.equal(split, "train")).as_py(), shards
    return seconds


def evaluation(inputs: Inputs, metrics=None, calibration=None) -> tuple[float, float, int]:
    """(AP50 seconds, calibration matching seconds, detections) of the test split's detections against its
    labels; `metrics`, `calibration`: other modules (baseline). The detections are read first, not timed."""
    import pyarrow.compute as pc

    from raylib import storage

    if metrics is None:
        from raylib import calibration, metrics
    labels_uri, _ = _labelled_set(inputs)
    test = storage.read_table(labels_uri).filter(pc.equal(pc.field("split"), "test"))
    columns = ["image_id", "class_id", "cls_conf", "loc_conf", "score", "x1", "y1", "x2", "y2"]
    detections = pa.Table.from_batches(
        [batch.filter(pc.is_in(batch.column("image_id"), test.column("image_id")))
         for batch in storage.iter_parquet_batches(inputs.detections, columns=columns)]).to_pandas()
    start = time.perf_counter()
    metrics.ap50_per_class(detections, metrics.labels_to_ground_truth(test), len(CLASSES))
    ap_seconds = time.perf_counter() - start
    start = time.perf_counter()
    calibration.calibration_summary(detections, metrics.labels_to_ground_truth(test))
    matching_seconds = time.perf_counter() - start
    return ap_seconds, matching_seconds, len(detections)


def _evaluation_modules_at(commit: str, folder: str) -> tuple:
    return (_module_at(commit, "raylib/metrics.py", folder), _module_at(commit, "raylib/calibration.py", folder))


def _train_data_at(commit: str, folder: str):
    """train_data at `commit`, over labels and pool at `commit` (its manifest scan and dicts)."""
    old_labels = _module_at(commit, "raylib/labels.py", folder, pool=_module_at(commit, "raylib/pool.py", folder))
    return _module_at(commit, "raylib/train_data.py", folder, labels=old_labels)


PHASES["labelled-set"] = labelled_set_phase
BASELINES["labelled-set"] = lambda inputs, folder: labelled_set_phase(
    inputs, _train_data_at(LABELLED_SET_BASELINE, folder))


if __name__ == "__main__":
    main()
