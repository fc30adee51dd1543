"""Label ingestion and the remaining pool at N selected images (issue 23), against today's code at 10^4.

    .venv/bin/python benchmarks/ingest_scale.py --images 100000 [--baseline-images 10000] [--work /tmp/x]

Fabricated, schema-true inputs: a pool manifest of 10N rows (ids in no sorted order), a labelled set of
90% of it (9N rows: the last round's case, issue 23's 10^6 pool / 9x10^5 labelled at N = 10^5), a
take-all selection of N pool images and the annotators' delivery of those N images as VOC XML files
(`voc.write_voc`, 3 objects of 20 classes each), a few of them unusable and a few missing.

Measured, in wall seconds on this machine, in the driver with a local Ray of 2 CPUs (fabrication and
the baseline run in a child process, so the driver's peak RSS is the new code's):
- ingest: what the oracle does with an external VOC delivery: the selected ids, their URIs from the
  manifest, and `deliveries.import_delivery` (Ray tasks of TASK_CHUNK files from TASK_MIN_IMAGES);
- remaining: `pool.write_remaining` of the pool less the labelled set (the labels file's id column).
The baseline runs the same steps through the code of BASELINE_COMMIT (loaded from a temporary copy:
a set of ids, `pool.image_uris`' dict, one-thread parsing, `is_in` per batch) at --baseline-images,
checks that the outputs agree, and the per-image ratio is printed. The last line is

    ingest_scale: N images: ingest S s, remaining S s; driver peak RSS G GiB
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib import labels, pool, schemas  # noqa: E402
from raylib.formats import deliveries, voc  # noqa: E402

BASELINE_COMMIT = "62c287b"  # before issue 23's ingestion and remaining-pool changes
CLASSES = [f"class{c:02d}" for c in range(20)]
OBJECTS_PER_IMAGE = 3


def fabricate(work: str, n_images: int, seed: int = 0) -> dict[str, str]:
    """Pool manifest, labels file, selection and VOC delivery for `n_images` selected images."""
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_pool = 10 * n_images
    ids = pa.array([f"cam{i % 97:02d}/img{i:09d}" for i in rng.permutation(n_pool)], pa.string())
    uris = pa.array([f"/pool/{i}.jpg" for i in ids.to_pylist()], pa.string())
    nulls = pa.nulls(n_pool, pa.int32())
    manifest = os.path.join(work, "pool.parquet")
    pq.write_table(pa.table([ids, uris, nulls, nulls], schema=schemas.POOL), manifest)
    # The last round: 90% of the pool labelled (the selection is among the rest).
    order = rng.permutation(n_pool)
    labelled, selected = ids.take(pa.array(order[: 9 * n_images])), ids.take(pa.array(order[9 * n_images:]))
    n_lab = len(labelled)
    labels_uri = os.path.join(work, "labels.parquet")
    pq.write_table(pa.table([labelled, pa.array(["train"] * n_lab, pa.string()), pa.array(np.zeros(n_lab, np.int16)),
                             pa.array([[]] * n_lab, pa.list_(schemas.OBJECT))], schema=schemas.LABELS), labels_uri)
    selection = os.path.join(work, "selection.parquet")
    n_sel = len(selected)
    pq.write_table(pa.table([pa.array(np.zeros(n_sel, np.int16)), selected, pa.array(np.full(n_sel, -1, np.int16)),
                             pa.array(np.zeros(n_sel, np.float32)), pa.array(np.arange(n_sel, dtype=np.int32))],
                            schema=schemas.SELECTION), selection)
    labels_in = os.path.join(work, "delivery")
    for k, image_id in enumerate(selected.to_pylist()):
        if k % 1000 == 999:
            continue  # not delivered yet
        objects = [voc.VocObject(CLASSES[int(rng.integers(20))], *_box(rng)) for _ in range(OBJECTS_PER_IMAGE)]
        if k % 1000 == 998:
            objects[0].name = "zebra"  # unusable: a class not configured
        ann = voc.VocAnnotation(f"{image_id.rsplit('/', 1)[-1]}.jpg", 640, 480, objects=objects,
                                folder=image_id.split("/", 1)[0])
        path = os.path.join(labels_in, "Annotations", f"{image_id}.xml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(voc.write_voc(ann))
    return {"manifest": manifest, "labels": labels_uri, "selection": selection, "labels_in": labels_in}


def _box(rng) -> tuple[float, float, float, float]:
    x1, y1 = float(rng.integers(0, 500)), float(rng.integers(0, 380))
    return x1, y1, x1 + float(rng.integers(10, 140)), y1 + float(rng.integers(10, 100))


def _load_baseline(tmp: str, name: str):
    """raylib/<name>.py as of BASELINE_COMMIT, imported from a temporary copy (the raylib it imports is today's)."""
    source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:raylib/{name}.py"], check=True, capture_output=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    path = os.path.join(tmp, f"baseline_{name}.py")
    with open(path, "wb") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def ingest_phase(inputs: dict[str, str]) -> tuple[float, deliveries.Delivery]:
    """The oracle's ingestion of an external VOC delivery, as oracle.label_selection does it now."""
    start = time.perf_counter()
    selected = labels.selected_ids(inputs["selection"])
    uris = pool.uris_of(inputs["manifest"], selected)
    delivery = deliveries.import_delivery("voc", inputs["labels_in"], uris, CLASSES)
    return time.perf_counter() - start, delivery


def remaining_phase(inputs: dict[str, str], out: str) -> tuple[float, int]:
    """The unlabelled stage: the pool less the labels file's ids (stages.unlabelled)."""
    start = time.perf_counter()
    n = pool.write_remaining(inputs["manifest"], inputs["labels"], out)
    return time.perf_counter() - start, n


def baseline_phases(inputs: dict[str, str], out: str, old_annotations, old_pool) -> tuple[float, float, object, int]:
    """The same two phases through BASELINE_COMMIT's code (its labels.oracle / stages.unlabelled steps)."""
    start = time.perf_counter()
    selected = sorted(set(pq.read_table(inputs["selection"], columns=["image_id"]).column("image_id").to_pylist()))
    uris = old_pool.image_uris(inputs["manifest"], selected)
    delivery = old_annotations.import_voc(inputs["labels_in"], uris, CLASSES)
    ingest = time.perf_counter() - start
    start = time.perf_counter()
    labelled = set(pq.read_table(inputs["labels"], columns=["image_id"]).column("image_id").to_pylist())
    n = old_pool.write_remaining(inputs["manifest"], labelled, out)
    return ingest, time.perf_counter() - start, delivery, n


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _baseline_run(work: str, n: int) -> dict:
    """Fabricate the baseline's inputs and run BASELINE_COMMIT's phases, in a child process (its memory
    is not the driver's); returns the times, the inputs and the baseline's delivery."""
    inputs = fabricate(work, n)
    ingest, remaining, delivery, n_rows = baseline_phases(
        inputs, os.path.join(work, "remaining_old.parquet"), _load_baseline(work, "annotations"),
        _load_baseline(work, "pool"))
    return {"ingest": ingest, "remaining": remaining, "inputs": inputs, "n_rows": n_rows,
            "delivery": (delivery.labels, delivery.errors, delivery.missing)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="selected (and delivered) images, N")
    parser.add_argument("--baseline-images", type=int, default=10_000, help="N of today's code path; 0: skip")
    parser.add_argument("--work", default=None, help="folder for the fabricated inputs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ingest_scale_")
    # Fabrication and the baseline run in child processes: the driver's peak RSS is the new code's.
    children = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rate = {}
        if args.baseline_images:
            n = args.baseline_images
            base_dir = os.path.join(work, f"n{n}")
            old = children.submit(_baseline_run, base_dir, n).result()
            inputs = old["inputs"]
            new_ingest, new_delivery = ingest_phase(inputs)
            new_remaining, new_n = remaining_phase(inputs, os.path.join(base_dir, "remaining_new.parquet"))
            old_labels, old_errors, old_missing = old["delivery"]
            assert new_delivery.labels.equals(old_labels), "ingestion: labels differ from the baseline's"
            assert new_delivery.errors == old_errors and new_delivery.missing == old_missing
            assert new_n == old["n_rows"] and pq.read_table(os.path.join(base_dir, "remaining_new.parquet")).equals(
                pq.read_table(os.path.join(base_dir, "remaining_old.parquet"))), "remaining pool differs"
            print(f"baseline {BASELINE_COMMIT} at {n}: ingest {old['ingest']:.2f} s, remaining {old['remaining']:.2f} s; "
                  f"new code at {n}: ingest {new_ingest:.2f} s, remaining {new_remaining:.2f} s (outputs identical)",
                  flush=True)
            rate = {"ingest": old["ingest"] / n, "remaining": old["remaining"] / n}
            del new_delivery, old
            shutil.rmtree(base_dir, ignore_errors=True)
        run_dir = os.path.join(work, f"n{args.images}")
        t = time.perf_counter()
        inputs = children.submit(fabricate, run_dir, args.images).result()
        children.shutdown()
        print(f"inputs at {args.images}: {time.perf_counter() - t:.1f} s to fabricate", flush=True)
        ingest, delivery = ingest_phase(inputs)
        remaining, n_remaining = remaining_phase(inputs, os.path.join(run_dir, "remaining.parquet"))
        n = args.images
        assert delivery.labels.num_rows + len(delivery.errors) + len(delivery.missing) == n
        assert n_remaining == n  # the selection is what is not labelled
        print(f"new code at {n}: ingest {ingest:.2f} s ({delivery.labels.num_rows} labelled, {len(delivery.errors)} "
              f"invalid, {len(delivery.missing)} missing), remaining {remaining:.2f} s ({n_remaining} rows of {10 * n})",
              flush=True)
        if rate:
            print(f"per image vs baseline at {args.baseline_images}: ingest {rate['ingest'] / (ingest / n):.1f}x, "
                  f"remaining {rate['remaining'] / (remaining / n):.1f}x faster", flush=True)
        print(f"ingest_scale: {n} images: ingest {ingest:.1f} s, remaining {remaining:.1f} s; "
              f"driver peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
