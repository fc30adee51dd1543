"""Experiment tracking (`logger=tensorboard`): curves a person can watch while a run goes on.

    tensorboard --logdir <run_root>/tensorboard     # logger.log_dir; a sweep: --logdir outputs/runs

Two TensorBoard runs under the log dir, each written by plain functions here:
  * `train/`: per epoch, from rank 0 inside the training function (as Ray Train's experiment-tracking
    guide does): `train/loss_total` and its parts `train/loss_iou|conf|cls|l1` (rank 0's shard, mean over
    the epoch), `train/lr` (at the epoch's end), `train/images_per_s`. Step = epochs trained across
    rounds, `round_idx * train.epochs + epoch` (epoch from 1), so the rounds' curves follow each other.
  * `round/`: per round, from the loop after `evaluate`; step = round_idx.
    `round/map50` (performance test set, metrics.json), `round/test_map50` (the labelled `test` split,
    metrics_test.json), `round/ap50/<class>`, `round/labelled_images` (the set this round trained on),
    `round/spearman/{loc_conf,cls_conf,score}` (rank correlation with true IoU on `val`, calibration.json),
    and of the selection that added images to this round's set (round r-1's selection/thresholds):
    `round/selected_images`, `round/selected_images/<class>`, `round/threshold/<class>`.

Every writer starts with TensorBoard's purge step at the first step it writes: a rerun (a resumed run,
a restarted worker group) replaces the points it writes again instead of doubling them.

`logger=mlflow` sends the same scalars, with the same steps, to one MLflow run per run root
(`MlflowWriter`, the three SummaryWriter calls the code above makes). The run is found again by its
`run_root` tag, so a resumed run, a restarted worker group and a stage job run alone all log to it;
MLflow cannot purge, so a point already logged at a step is kept and the rerun's is dropped. Its params
are the resolved config (flattened keys), its tags strategy / seed / data / model, its artifacts the
report's PNGs (`log_report`, each round). The store is `logger.tracking_uri` (a server: `http://host:5000`),
or by default a local SQLite store beside the run roots of a sweep, one experiment per sweep folder:

    mlflow ui --backend-store-uri sqlite:///outputs/runs/<data>_<model>/mlflow.db

Workers on other nodes reach a local store only through a shared disk: on a cluster, use a server.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from raylib import paths, storage
from raylib.run_config import flatten
from raylib.config import Config, ConfigError
from raylib.paths import RoundPaths

TRAIN_RUN = "train"  # <log_dir>/train: per-epoch scalars
ROUND_RUN = "round"  # <log_dir>/round: per-round scalars
MLFLOW_MISSING = "logger=mlflow needs the mlflow package (pip install mlflow-skinny sqlalchemy alembic); it is not installed"
MLFLOW_ON_S3 = ("logger=mlflow with a run_root on S3 needs logger.tracking_uri=<an MLflow server, "
                "http://host:5000>: the default store is a local SQLite file")
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call (metrics: 1000)
# train_engine.train_one_epoch's keys -> tags
LOSS_TAGS = {"total_loss": "train/loss_total", "iou_loss": "train/loss_iou", "conf_loss": "train/loss_conf",
             "cls_loss": "train/loss_cls", "l1_loss": "train/loss_l1"}


def require_tracking(cfg: Config) -> None:
    """Refuse a logger that cannot run here, or a store the run cannot write to, in one line (ConfigError)."""
    if cfg.logger.kind != "mlflow":
        return
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(MLFLOW_MISSING)
    if not cfg.logger.tracking_uri and storage.is_s3(cfg.run_root):
        raise ConfigError(MLFLOW_ON_S3)


def log_dir(cfg: Config) -> str:
    """`logger.log_dir`, or `<run_root>/tensorboard`."""
    return cfg.logger.log_dir or storage.join(cfg.run_root, "tensorboard")


@dataclass(frozen=True)
class EpochLog:
    """Where scalars go (`logger.kind`), resolved from the config on the driver (`epoch_log`): a training
    worker opens its writer from this, without the run's Config."""
    kind: str  # none | tensorboard | mlflow
    log_dir: str = ""  # tensorboard: runs under <log_dir>/<run>
    tracking_uri: str = ""  # mlflow: the store and the run root's run in it
    run_id: str = ""


def epoch_log(cfg: Config) -> EpochLog:
    """The run's EpochLog; with `logger=mlflow` its MLflow run is found (or created) here."""
    if cfg.logger.kind == "mlflow":
        return EpochLog("mlflow", tracking_uri=mlflow_tracking_uri(cfg), run_id=mlflow_run_id(cfg))
    if cfg.logger.kind == "tensorboard":
        return EpochLog("tensorboard", log_dir=log_dir(cfg))
    return EpochLog("none")


def open_writer(log: EpochLog, run: str, first_step: int):
    """A SummaryWriter on `<log_dir>/<run>` whose points from `first_step` on replace earlier ones
    (TensorBoard's purge step); with `logger=mlflow`, an MlflowWriter on the run's MLflow run; None
    with `logger=none`."""
    if log.kind == "mlflow":
        return MlflowWriter(log)
    if log.kind != "tensorboard":
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(storage.join(log.log_dir, run), purge_step=first_step)


def epoch_step(round_idx: int, epochs: int, epoch: int) -> int:
    """The global step of epoch `epoch` (from 1) of round `round_idx`: epochs trained across rounds."""
    return round_idx * epochs + epoch


def log_epoch(writer, step: int, losses: dict[str, float], lr: float, images_per_s: float) -> None:
    """One epoch's scalars (see the module doc), flushed: a worker that dies next loses nothing logged."""
    for key, tag in LOSS_TAGS.items():
        if key in losses:
            writer.add_scalar(tag, losses[key], step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/images_per_s", images_per_s, step)
    writer.flush()


def round_scalars(rp: RoundPaths, class_names: list[str], summary: dict[str, Any]) -> dict[str, float]:
    """{tag: value} of round `rp.round_idx` from its files (metrics.json, metrics_test.json,
    calibration.json; the previous round's selection.parquet and thresholds.parquet) and the evaluate
    stage's `summary` (its `splits` counts). Missing files and null or NaN values give no tag."""
    scalars: dict[str, Any] = {}
    perf, test, calib = (_json(uri) for uri in (rp.metrics, rp.metrics_test, rp.calibration_summary))
    scalars["round/map50"] = perf.get("map50")
    scalars["round/test_map50"] = test.get("map50")
    for name, ap50 in perf.get("ap50_per_class", {}).items():
        scalars[f"round/ap50/{name}"] = ap50
    if summary.get("splits"):
        scalars["round/labelled_images"] = sum(summary["splits"].values())
    for part in ("loc_conf", "cls_conf", "score"):
        scalars[f"round/spearman/{part}"] = calib.get(f"spearman_{part}_true_iou")
    if rp.round_idx > 0:  # the seed round's selection is a random sample: no per-class quota
        scalars.update(_selection_scalars(RoundPaths(rp.run_root, rp.round_idx - 1), class_names))
    return {tag: float(value) for tag, value in scalars.items()
            if value is not None and math.isfinite(float(value))}


def log_round(cfg: Config, rp: RoundPaths, class_names: list[str],
              summary: dict[str, Any]) -> dict[str, float]:
    """Write `round_scalars` at step `rp.round_idx` (nothing with `logger=none`); returns them."""
    writer = open_writer(epoch_log(cfg), ROUND_RUN, rp.round_idx)
    if writer is None:
        return {}
    scalars = round_scalars(rp, class_names, summary)
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, rp.round_idx)
    writer.close()
    return scalars


def _json(uri: str) -> dict:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def _selection_scalars(selected_in: RoundPaths, class_names: list[str]) -> dict[str, float]:
    """Images selected in round `selected_in` (all, and per class quota), and each class's score threshold.
    A take-all selection (class_id -1) has no per-class rows and no thresholds."""
    scalars: dict[str, float] = {}
    if storage.exists(selected_in.selection):
        selection = storage.read_table(selected_in.selection, columns=["image_id", "class_id"]).to_pandas()
        scalars["round/selected_images"] = selection["image_id"].nunique()
        per_class = selection[selection["class_id"] >= 0].groupby("class_id")["image_id"].nunique()
        for class_id, name in enumerate(class_names if len(per_class) else []):
            scalars[f"round/selected_images/{name}"] = int(per_class.get(class_id, 0))
    if storage.exists(selected_in.thresholds):
        thresholds = storage.read_table(selected_in.thresholds, columns=["class_id", "threshold"]).to_pylist()
        for row in thresholds:
            if 0 <= row["class_id"] < len(class_names) and row["threshold"] is not None:
                scalars[f"round/threshold/{class_names[row['class_id']]}"] = row["threshold"]
    return scalars


def mlflow_tracking_uri(cfg: Config) -> str:
    """`logger.tracking_uri`, or the SQLite store beside the sweep's runs (`<runs_root>/mlflow.db`)."""
    return cfg.logger.tracking_uri or f"sqlite:///{paths.mlflow_store(paths.runs_root(cfg.run_root))}"


class MlflowWriter:
    """The calls of SummaryWriter that this module makes (add_scalar, flush, close) on the run root's
    MLflow run (`mlflow_run_id`). Points go out in one `log_batch` per flush. A point at a step the run
    already has for that tag is dropped: MLflow has no purge step, and a rerun's epochs would be doubled."""

    def __init__(self, log: EpochLog):
        self.client = _client_at(log.tracking_uri)
        self.run_id = log.run_id
        self.pending: list = []
        self.steps: dict[str, set[int]] = {}  # tag -> steps the run has, read once per tag

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if tag not in self.steps:
            self.steps[tag] = {m.step for m in self.client.get_metric_history(self.run_id, tag)}
        if step not in self.steps[tag]:
            self.steps[tag].add(step)
            self.pending.append(Metric(tag, float(value), int(time.time() * 1000), int(step)))

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[start:start + 1000])
        self.pending = []

    def close(self) -> None:
        self.flush()


def mlflow_run_id(cfg: Config, client=None) -> str:
    """The MLflow run of `cfg.run_root` (tag `run_root`) in the experiment named after the sweep folder,
    created with the config's params and the run's tags the first time."""
    from mlflow.entities import Param

    client = client or _mlflow_client(cfg)
    runs_root = paths.runs_root(cfg.run_root)
    experiment_id = _experiment_id(client, os.path.basename(runs_root) or "raylib",
                                   None if cfg.logger.tracking_uri else paths.mlflow_artifacts(runs_root))
    quoted = cfg.run_root.replace("'", "\\'")
    found = client.search_runs([experiment_id], filter_string=f"tags.run_root = '{quoted}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=os.path.basename(cfg.run_root.rstrip("/")), tags={
        "run_root": cfg.run_root, "strategy": cfg.strategy.name, "seed": str(cfg.seed),
        "data": cfg.data.kind, "model": cfg.model.size})
    params = [Param(key, str(value)[:6000]) for key, value in flatten(cfg).items()]
    for start in range(0, len(params), MLFLOW_BATCH):
        client.log_batch(run.info.run_id, params=params[start:start + MLFLOW_BATCH])
    return run.info.run_id


def log_report(cfg: Config, report_dir: str) -> None:
    """The report's PNGs (and report.md) as the MLflow run's `report/` artifacts (`logger=mlflow` only)."""
    if cfg.logger.kind != "mlflow":
        return
    client = _mlflow_client(cfg)
    run_id = mlflow_run_id(cfg, client)
    with tempfile.TemporaryDirectory() as local:  # the report may be on S3: artifacts are logged from disk
        for uri in storage.list_files(report_dir, ""):
            if uri.endswith((".png", ".md")):
                with open(os.path.join(local, uri.rsplit("/", 1)[-1]), "wb") as handle:
                    handle.write(storage.read_bytes(uri))
        client.log_artifacts(run_id, local, "report")


def start_run(cfg: Config) -> None:
    """Create the run's MLflow run, or mark a resumed one RUNNING again (`logger=mlflow` only)."""
    if cfg.logger.kind == "mlflow":
        client = _mlflow_client(cfg)
        client.update_run(mlflow_run_id(cfg, client), "RUNNING")


def end_run(cfg: Config, status: str = "FINISHED") -> None:
    """Mark the MLflow run FINISHED or FAILED (`logger=mlflow` only)."""
    if cfg.logger.kind == "mlflow":
        client = _mlflow_client(cfg)
        client.set_terminated(mlflow_run_id(cfg, client), status)


def _mlflow_client(cfg: Config):
    return _client_at(mlflow_tracking_uri(cfg))


def _client_at(uri: str):
    from mlflow import MlflowClient

    # MLflow (which sets its level when imported) and Alembic log each database migration at INFO.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]), exist_ok=True)
    return MlflowClient(uri)


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another point of the sweep created it first
        return client.get_experiment_by_name(name).experiment_id
