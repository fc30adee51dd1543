"""The active-learning loop of the seed (5.2, 6.5-6.6), one round after another.

Round r:  train on the labelled set -> evaluate on the fixed performance test set -> score the
unlabelled pool -> select (per-class bottom-k; the last selection takes every image left) -> export
VOC pre-annotations -> oracle labels -> the labelled set of round r + 1.

Every stage writes its outputs under `<run_root>/round=NN/` and then a marker `_done/<stage>`;
re-running the same command skips committed stages and redoes the first uncommitted one whole.
All randomness is seeded from `cfg.seed`, so a resumed run selects what an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import paths, pool, report, schemas, storage, voc
from raylib.config import Config
from raylib.evaluate import evaluate_split
from raylib.export import export_preannotations
from raylib.paths import RoundPaths
from raylib.runtime import Dataset, ensure_dataset
from raylib.score import score_pool
from raylib.select import select_round
from raylib.stage import run_stage
from raylib.train import train_model

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class LoopResult:
    run_root: str
    rounds_done: int
    map50: list[float] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    report: str = ""
    stopped_because: str = ""


def run_loop(cfg: Config) -> LoopResult:
    """Run (or resume) every round of the loop for `cfg`; returns the mAP50 curve and report path."""
    ds = ensure_dataset(cfg)
    storage.write_text(storage.join(cfg.run_root, "run.json"),
                       json.dumps({"strategy": cfg.strategy.name, "seed": cfg.seed, "model": cfg.model.size,
                                   "k": cfg.strategy.k, "classes": ds.class_names}))
    perf_test = _ensure_perf_test_labels(cfg, ds)
    labels_uri = _ensure_seed_labels(cfg, ds)
    result = LoopResult(run_root=cfg.run_root, rounds_done=0)

    for round_idx in range(cfg.loop.rounds):
        rp = RoundPaths(cfg.run_root, round_idx)
        n_labelled = storage.read_table(labels_uri, columns=["image_id"]).num_rows
        trained = run_stage(rp, "train", lambda: _train(cfg, ds, labels_uri, rp))
        metrics = run_stage(rp, "evaluate", lambda: _evaluate(cfg, ds, trained["weights_uri"], labels_uri, perf_test, rp))
        result.rounds_done = round_idx + 1
        result.map50.append(metrics["map50"])
        result.labelled.append(n_labelled)
        report.write_report(cfg.run_root)

        stop = _stop_reason(cfg, result, round_idx)
        if stop:
            result.stopped_because = stop
            break
        take_all = cfg.loop.last_round_takes_all and round_idx == cfg.loop.rounds - 2
        unlabelled = storage.join(rp.root, "unlabelled.parquet")
        remaining = run_stage(rp, "unlabelled", lambda: {"n_images": pool.write_remaining(
            ds.pool_manifest, _labelled_ids(labels_uri), unlabelled)})
        if remaining["n_images"] == 0:
            result.stopped_because = "the pool is empty"
            break
        run_stage(rp, "score", lambda: asdict(score_pool(unlabelled, trained["weights_uri"], rp, cfg, ds.class_names)))
        run_stage(rp, "select", lambda: _select(cfg, rp, unlabelled, take_all, len(ds.class_names)))
        run_stage(rp, "export", lambda: {"n_files": export_preannotations(
            rp.selection, rp.detections, unlabelled, ds.class_names, rp.preannotations, round_idx)})
        try:
            run_stage(rp, "oracle", lambda: _oracle(cfg, ds, labels_uri, rp))
        except LabelsPending as pending:
            result.stopped_because = str(pending)
            break
        labels_uri = rp.labels
    else:
        result.stopped_because = f"{cfg.loop.rounds} rounds done"

    result.report = report.write_report(cfg.run_root)
    runs_root = cfg.run_root.rstrip("/").rsplit("/", 1)[0] if "/" in cfg.run_root.rstrip("/") else "."
    report.compare_runs(runs_root, storage.join(runs_root, "comparison"))
    print(f"Loop stopped: {result.stopped_because}. Report: {result.report}", flush=True)
    return result


def _stop_reason(cfg: Config, result: LoopResult, round_idx: int) -> str:
    if round_idx == cfg.loop.rounds - 1:
        return f"{cfg.loop.rounds} rounds done"
    gain, patience = cfg.loop.stop_min_gain, cfg.loop.stop_patience
    if gain is not None and len(result.map50) > patience:
        recent = result.map50[-1] - result.map50[-1 - patience]
        if recent < gain:
            return f"mAP50 gained {recent:.4f} < {gain} over the last {patience} rounds (seed 5.2.3)"
    return ""


# ---------------------------------------------------------------- labelled set


def _ensure_perf_test_labels(cfg: Config, ds: Dataset) -> str:
    """Ground truth of the fixed performance test set, written once."""
    uri = storage.join(cfg.run_root, "labels_perf_test.parquet")
    if storage.exists(uri):
        return uri
    ids = [i for batch in pool.iter_manifest(ds.test_manifest, 65536) for i in batch.column("image_id").to_pylist()]
    table, errors = voc.read_voc_labels(ds.voc_root, ids, ds.class_names)
    for image_id, message in errors:
        log.warning("performance test image %s left out: %s", image_id, message)
    storage.write_table(_as_labels(table, "perf_test", 0), uri)
    return uri


def _ensure_seed_labels(cfg: Config, ds: Dataset) -> str:
    """Round 0's labelled set: `seed_size` random pool images (seed 6.5 step 2), split 70/15/15."""
    uri = paths.seed_labels(cfg.run_root)
    if storage.exists(uri):
        return uri
    seed_ids = sample_ids(ds.pool_manifest, cfg.loop.seed_size, cfg.seed)
    table, errors = voc.read_voc_labels(ds.voc_root, seed_ids, ds.class_names)
    for image_id, message in errors:
        log.warning("seed image %s stays unlabelled: %s", image_id, message)
    storage.write_table(_split(table, cfg, round_added=0), uri)
    return uri


def sample_ids(manifest_uri: str, n: int, seed: int) -> list[str]:
    """A uniform random sample of `n` ids, streaming: each id gets a seeded hash key and the n smallest
    keys win, so memory is O(n) however large the pool, and the sample doesn't depend on file order."""
    heap: list[tuple[int, str]] = []  # max-heap of the n smallest keys, as negated keys
    for batch in pool.iter_manifest(manifest_uri, 65536):
        for image_id in batch.column("image_id").to_pylist():
            digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
            key = int.from_bytes(digest, "big")
            if len(heap) < n:
                heapq.heappush(heap, (-key, image_id))
            elif key < -heap[0][0]:
                heapq.heapreplace(heap, (-key, image_id))
    return sorted(image_id for _, image_id in heap)


def _labelled_ids(labels_uri: str) -> set[str]:
    return set(storage.read_table(labels_uri, columns=["image_id"]).column("image_id").to_pylist())


def _as_labels(table: pa.Table, split: str | list[str], round_added: int) -> pa.Table:
    splits = [split] * table.num_rows if isinstance(split, str) else split
    return schemas.check(
        pa.table({"image_id": table.column("image_id"), "split": pa.array(splits, pa.string()),
                  "round_added": pa.array([round_added] * table.num_rows, pa.int16()),
                  "objects": table.column("objects")}),
        schemas.LABELS, "labels",
    )


def stratified_split(image_ids: list[str], strata: list[str], fractions: tuple[float, float, float],
                     seed: int) -> list[str]:
    """Assign train/val/test per stratum in the given fractions (seed 6.6: stratified 70/15/15).

    Within a stratum ids are shuffled with `seed`; counts use the largest remainder, so a stratum of
    n images gets round(n * fraction) of each split, with leftovers going to the largest fractions.
    """
    rng = np.random.default_rng(seed)
    assigned: dict[str, str] = {}
    by_stratum: dict[str, list[str]] = {}
    for image_id, stratum in zip(image_ids, strata):
        by_stratum.setdefault(stratum, []).append(image_id)
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum])
        rng.shuffle(members)
        exact = np.asarray(fractions) * len(members)
        counts = np.floor(exact).astype(int)
        for idx in np.argsort(-(exact - counts), kind="stable")[: len(members) - counts.sum()]:
            counts[idx] += 1
        bounds = np.cumsum(counts)
        for position, image_id in enumerate(members):
            assigned[image_id] = SPLIT_NAMES[int(np.searchsorted(bounds, position, side="right"))]
    return [assigned[image_id] for image_id in image_ids]


def _split(table: pa.Table, cfg: Config, round_added: int) -> pa.Table:
    """Newly labelled images get a split; earlier images keep theirs, so val/test never leak into train."""
    strata = []
    for objects in table.column("objects").to_pylist():
        classes = sorted({obj["class_id"] for obj in objects})
        # The class an image is rarest in decides its stratum: small classes then reach every split.
        strata.append(str(max(classes)) if classes else "empty")
    splits = stratified_split(table.column("image_id").to_pylist(), strata, tuple(cfg.loop.split),
                              seed=cfg.seed * 1000 + round_added)
    return _as_labels(table, splits, round_added)


# ---------------------------------------------------------------- stages


def _train(cfg: Config, ds: Dataset, labels_uri: str, rp: RoundPaths) -> dict:
    result = train_model(cfg, labels_uri, ds.pool_manifest, rp.checkpoint, ds.class_names,
                         init_weights=cfg.model.weights)
    return {"weights_uri": result.weights_uri, "best_val_map50": result.best_map50, "epochs": result.epochs}


def _evaluate(cfg: Config, ds: Dataset, weights_uri: str, labels_uri: str, perf_test: str, rp: RoundPaths) -> dict:
    metrics = evaluate_split(cfg, weights_uri, perf_test, ds.test_manifest, "perf_test", rp.metrics, ds.class_names)
    test_metrics = evaluate_split(cfg, weights_uri, labels_uri, ds.pool_manifest, "test",
                                  storage.join(rp.root, "metrics_test.json"), ds.class_names)
    counts = storage.read_table(labels_uri, columns=["split"]).column("split").value_counts().to_pylist()
    return {"map50": metrics["map50"], "test_map50": test_metrics["map50"],
            "splits": {item["values"]: item["counts"] for item in counts}}


def _select(cfg: Config, rp: RoundPaths, unlabelled: str, take_all: bool, num_classes: int) -> dict:
    if not take_all:
        return asdict(select_round(rp.detections, cfg.strategy, rp.round_idx, rp, num_classes))
    # Seed 6.6: the last selection takes every image left, without confidence filtering.
    n_images = _write_selection_of_all(unlabelled, rp.round_idx, rp.selection)
    storage.write_table(schemas.empty(schemas.THRESHOLDS), rp.thresholds)
    return {"n_images": n_images, "take_all": True}


def _write_selection_of_all(manifest_uri: str, round_idx: int, out_uri: str) -> int:
    """Every image of `manifest_uri` as a selection row (class_id -1: selected by no class quota),
    streamed batch by batch: the last round's pool may be most of the dataset."""

    def rows() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in pool.iter_manifest(manifest_uri, 65536):
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays([
                pa.array(np.full(n, round_idx, np.int16)), batch.column("image_id"),
                pa.array(np.full(n, -1, np.int16)), pa.array(np.zeros(n, np.float32)),
                pa.array(np.arange(start, start + n, dtype=np.int32))], schema=schemas.SELECTION)
            start += n

    return storage.write_batches(rows(), out_uri, schemas.SELECTION)


class LabelsPending(Exception):
    """The external oracle found no usable label for any selected image: the round waits for them."""


def _oracle(cfg: Config, ds: Dataset, labels_uri: str, rp: RoundPaths) -> dict:
    """Labels for the selected images: the dataset's ground truth (`simulate`, the seed's experiment)
    or annotators' corrected XML under `loop.labels_in/Annotations/` (`external`). Images whose labels
    are missing or invalid stay in the pool; the reasons go to `oracle_errors.json`.

    With `external`, a round for which no label has arrived yet raises `LabelsPending` before anything
    is committed: the loop stops there, and running the same command again once the annotators have
    delivered resumes at this stage (a Ray job should not hold a cluster while people annotate)."""
    selected = sorted(set(storage.read_table(rp.selection, columns=["image_id"]).column("image_id").to_pylist()))
    source = ds.voc_root if cfg.loop.oracle == "simulate" else cfg.loop.labels_in
    table, errors = voc.read_voc_labels(source, selected, ds.class_names)
    storage.write_text(storage.join(rp.root, "oracle_errors.json"), json.dumps(dict(errors), indent=1))
    if cfg.loop.oracle == "external" and selected and table.num_rows == 0:
        raise LabelsPending(
            f"round {rp.round_idx}: waiting for labels: none of the {len(selected)} selected images has a "
            f"usable VOC file under '{storage.join(source, 'Annotations')}/' yet (pre-annotations to correct: "
            f"'{rp.preannotations}'; reasons per image: '{storage.join(rp.root, 'oracle_errors.json')}'). "
            "Run the same command again when they are in.")
    previous = storage.read_table(labels_uri, schema=schemas.LABELS)
    new = _split(table, cfg, round_added=rp.round_idx + 1)
    new = new.filter(pc.invert(pc.is_in(new.column("image_id"), previous.column("image_id"))))
    storage.write_table(pa.concat_tables([previous, new]), rp.labels)
    return {"n_selected": len(selected), "n_labelled": new.num_rows, "n_missing": len(errors)}
