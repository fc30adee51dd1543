"""The stages of a round, one function each, shared by the loop (raylib/loop.py) and the stage jobs
(jobs/<stage>.py): a stage run alone is the loop's stage.

Each is `stage(cfg, ds, rp) -> summary`: it reads what earlier stages wrote under the round's paths
`rp` (raylib/paths.py), writes its own outputs there, and hands each library function its own slice
of the config. The summary is what the stage's marker stores. Their order, and which weights or pool a
stage reads, are in raylib/commit.py (no torch or Ray there, for the jobs' checks and jobs/status.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from raylib import diversity, labels, paths, pool, runtime, schemas, storage, strategies, tracking
from raylib.calibration import calibrate_split
from raylib.config import Config, ConfigError
from raylib.dataset import Dataset
from raylib.evaluate import evaluate_split, on_device
from raylib.oracle import label_selection
from raylib.export import export_preannotations
from raylib.paths import RoundPaths
from raylib.review import write_review
from raylib.commit import STAGES, init_weights, scoring_weights, takes_all
from raylib.score import ScoringSetup, score_pool
from raylib.select import select_round
from raylib.training.train import train_model
from raylib.training.worker import TrainingSetup


def labelled_set(cfg: Config, ds: Dataset, rp: RoundPaths) -> str:
    """The labelled set round `rp.round_idx` trains on: the loop's (seed set, then the previous oracle's
    output); outside a loop, every pool image with its labels (raylib/labels.py)."""
    return labels.labels_for_round(rp.run_root, rp.round_idx, ds, cfg.loop.split, cfg.seed)


def training(cfg: Config) -> TrainingSetup:
    """Training's slices of the config; the logger's destination resolved here, on the driver."""
    tracking.require_tracking(cfg)
    return TrainingSetup(cfg.train, cfg.model, cfg.seed, tracking.epoch_log(cfg))


def train(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    result = train_model(training(cfg), labelled_set(cfg, ds, rp), ds.pool_manifest, rp.checkpoint, ds.class_names,
                         init_weights=init_weights(cfg, rp), max_pixels=cfg.data.max_pixels,
                         round_idx=rp.round_idx)
    return {"weights_uri": result.weights_uri, "best_val_map50": result.best_map50, "epochs": result.epochs}


def evaluate(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """AP50 on the fixed performance test set (the curve) and on the labelled set's `test` split, and
    whether loc_conf is a predicted IoU on its `val` split (ground truth known there): three Ray tasks
    at once (`evaluate.on_device`)."""
    labels_uri = labelled_set(cfg, ds, rp)
    perf_test = labels.perf_test_labels(rp.run_root, ds)
    model = (cfg.eval, cfg.model, rp.weights)
    perf, test, calib = on_device(cfg.eval, [
        (evaluate_split, (*model, perf_test, ds.test_manifest, "perf_test", rp.metrics, ds.class_names,
                          cfg.data.max_pixels)),
        (evaluate_split, (*model, labels_uri, ds.pool_manifest, "test", rp.metrics_test, ds.class_names,
                          cfg.data.max_pixels)),
        (calibrate_split, (*model, labels_uri, ds.pool_manifest, "val", ds.class_names, cfg.data.max_pixels,
                           cfg.strategy.min_score, rp.calibration, rp.calibration_summary)),
    ])
    return {"map50": perf["map50"], "test_map50": test["map50"], "splits": labels.split_counts(labels_uri),
            "val_spearman_loc_conf_true_iou": calib["spearman_loc_conf_true_iou"]}


def unlabelled(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """The pool less the images labelled so far: what this round scores (an anti-join against the
    labels file's image_id column; no id becomes a Python string). In one Ray task: the join's hash of
    the labelled ids is O(labelled), ~0.2 GiB at 10^6, and stays off the driver."""
    labelled = labelled_set(cfg, ds, rp)
    return {"n_images": runtime.in_task(pool.write_remaining, ds.pool_manifest, labelled, rp.unlabelled)}


def scoring(cfg: Config, embeddings: bool | None = None) -> ScoringSetup:
    """Scoring's slices of the config; embeddings by default for the diversity strategies."""
    embeddings = cfg.strategy.name in strategies.DIVERSE if embeddings is None else embeddings
    return ScoringSetup(cfg.score, cfg.model, cfg.strategy, cfg.data.max_pixels, embeddings)


def score(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """The round's pool scored by its model; for a diversity strategy, its labelled images too (their
    embeddings are what k-center counts as covered: selection.spread_out)."""
    weights = scoring_weights(cfg, rp)
    summary = asdict(score_pool(pool.round_pool(rp, ds.pool_manifest), weights, rp, scoring(cfg), ds.class_names))
    if cfg.strategy.name in strategies.DIVERSE:
        labelled = rp.labelled_scoring
        pool.write_labelled(ds.pool_manifest, labelled_set(cfg, ds, rp), labelled.manifest)
        summary["n_labelled_embedded"] = score_pool(labelled.manifest, weights, labelled, scoring(cfg),
                                                    ds.class_names).n_ok
    return summary


def select(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    if rp.round_idx == paths.SEED_ROUND:
        return _select_seed(cfg, ds, rp)
    if not takes_all(cfg, rp.round_idx):
        return asdict(select_round(rp.detections, cfg.strategy, rp.round_idx, rp, len(ds.class_names),
                                   covered=rp.labelled_scoring.embeddings))
    # Without confidence filtering: every image scored, whatever its detections.
    n_images = _write_selection_of_all(pool.round_pool(rp, ds.pool_manifest), rp.round_idx, rp.selection)
    storage.write_table(schemas.empty(schemas.THRESHOLDS), rp.thresholds)
    return {"n_images": n_images, "take_all": True}


def export(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """The annotators' pre-annotations, then the round's review page for people (raylib/review.py). The
    page is a step of this stage, not a stage of its own: it reads what the export reads, when the
    export runs, and is wanted when the annotators get their files; one marker covers both, and the
    jobs, the status and the stage order have no stage more to know."""
    n_files = export_preannotations(rp.selection, rp.detections, rp.image_status, ds.class_names,
                                    rp.preannotations, rp.round_idx, cfg.loop.labelstudio_document_root)
    page = write_review(rp, ds.class_names, cfg.data.max_pixels)
    return {"n_files": n_files, "review_thumbnails": page.n_thumbnails, "review_placeholders": page.n_placeholders}


def oracle(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """Labels for the selection (simulated or the annotators'), added to the round's labelled set. Raises
    oracle.LabelsPending while the annotators' delivery is incomplete."""
    previous = labelled_set(cfg, ds, rp) if rp.round_idx != paths.SEED_ROUND else None
    return label_selection(rp, ds, cfg.loop, cfg.seed, previous, (cfg.storage.endpoint_url, cfg.storage.region))


BY_NAME = {name: globals()[name] for name in STAGES}  # each stage's function has the stage's name


def _select_seed(cfg: Config, ds: Dataset, rp: RoundPaths) -> dict:
    """The seed round's selection, for annotators from round 0 (no model yet): `loop.seed_size` random pool
    images (labels.sample_ids, as a simulated seed set), written as a round's selection with image_status
    rows (sizes unknown: export reads the headers) and no detections, so that export and oracle treat it
    as any round's."""
    ids = seed_ids(cfg, ds)
    uris = pool.image_uris(ds.pool_manifest, ids)
    n = len(ids)
    image_ids = pa.array(ids, pa.string())
    storage.write_table(pa.table([
        pa.array(np.full(n, rp.round_idx, np.int16)), image_ids, pa.array(np.full(n, -1, np.int16)),
        pa.array(np.zeros(n, np.float32)), pa.array(np.arange(n, dtype=np.int32))], schema=schemas.SELECTION),
        rp.selection)
    sizes = pa.nulls(n, pa.int32())
    storage.write_table(pa.table([
        pa.array(np.full(n, rp.round_idx, np.int16)), image_ids, pa.array(["ok"] * n, pa.string()),
        pa.nulls(n, pa.string()), pa.array(np.zeros(n, np.int32)), sizes, sizes,
        pa.array([uris[i] for i in ids], pa.string())], schema=schemas.IMAGE_STATUS),
        paths.part_file(rp.image_status, 0))
    storage.write_table(schemas.empty(schemas.DETECTIONS), paths.part_file(rp.detections, 0))
    return {"n_images": n, "seed": True}


def seed_ids(cfg: Config, ds: Dataset) -> list[str]:
    """Round 0's seed images (`loop.seed_strategy`): `loop.seed_size` uniform random pool images, or
    `strategy.pool_factor` x as many random candidates embedded by the start model (`model.weights`),
    of which `loop.seed_size` are kept: spread out (kcenter: k-center greedy) or the most typical of
    as many clusters (typical: TypiClust). A candidate that can't be read is left out. Memory: the
    candidates', never the pool's."""
    loop = cfg.loop
    if loop.seed_strategy == "random":
        return labels.sample_ids(ds.pool_manifest, loop.seed_size, cfg.seed)
    if not cfg.model.weights:
        raise ConfigError(f"loop.seed_strategy={loop.seed_strategy} needs model.weights: the start model whose "
                          "features place the seed set (a model that has not trained sees every image alike)")
    candidates = labels.sample_ids(ds.pool_manifest, loop.seed_size * cfg.strategy.pool_factor, cfg.seed)
    at = RoundPaths(cfg.run_root, paths.SEED_ROUND).candidate_scoring
    uris = pool.image_uris(ds.pool_manifest, candidates)
    storage.write_table(schemas.check(pa.table({"image_id": candidates, "uri": [uris[i] for i in candidates]}),
                                      schemas.POOL, "pool"), at.manifest)
    score_pool(at.manifest, cfg.model.weights, at, scoring(cfg, embeddings=True), ds.class_names)
    ok = storage.read_table(at.embeddings, columns=["image_id"]).column("image_id").to_pylist()
    vectors = diversity.read_embeddings(at.embeddings, ok)
    readable = [i for i in candidates if i in vectors]  # sample order: sorted ids
    rows = np.stack([vectors[i] for i in readable]) if readable else np.zeros((0, 1), np.float32)
    picks = (diversity.k_center_greedy(rows, loop.seed_size) if loop.seed_strategy == "kcenter"
             else diversity.typical_picks(rows, loop.seed_size, cfg.seed))
    return sorted(readable[p] for p in picks)


def _write_selection_of_all(manifest_uri: str, round_idx: int, out_uri: str) -> int:
    """Every image of `manifest_uri` as a selection row (class_id -1: selected by no class quota),
    streamed batch by batch: the last round's pool may be most of the dataset."""

    def rows() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in pool.iter_manifest(manifest_uri):
            n = batch.num_rows
            yield pa.RecordBatch.from_arrays([
                pa.array(np.full(n, round_idx, np.int16)), batch.column("image_id"),
                pa.array(np.full(n, -1, np.int16)), pa.array(np.zeros(n, np.float32)),
                pa.array(np.arange(start, start + n, dtype=np.int32))], schema=schemas.SELECTION)
            start += n

    return storage.write_batches(rows(), out_uri, schemas.SELECTION)
