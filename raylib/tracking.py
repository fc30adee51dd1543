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

`logger=mlflow` is accepted by the schema but refused when a run starts (`require_logger`): the
mlflow package is not installed in this project's environment, so there is no MLflow code to run.
"""
from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

from raylib import storage
from raylib.config import Config, ConfigError, LoggerConfig
from raylib.paths import RoundPaths

TRAIN_RUN = "train"  # <log_dir>/train: per-epoch scalars
ROUND_RUN = "round"  # <log_dir>/round: per-round scalars
MLFLOW_MISSING = "logger=mlflow needs the mlflow package (pip install mlflow); it is not installed"
# train_engine.train_one_epoch's keys -> tags
LOSS_TAGS = {"total_loss": "train/loss_total", "iou_loss": "train/loss_iou", "conf_loss": "train/loss_conf",
             "cls_loss": "train/loss_cls", "l1_loss": "train/loss_l1"}


def require_logger(lc: LoggerConfig) -> None:
    """Refuse a logger that cannot run here, in one line (raises ConfigError)."""
    if lc.kind == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(MLFLOW_MISSING)


def log_dir(cfg: Config) -> str:
    """`logger.log_dir`, or `<run_root>/tensorboard`."""
    return cfg.logger.log_dir or storage.join(cfg.run_root, "tensorboard")


def open_writer(cfg: Config, run: str, first_step: int):
    """A SummaryWriter on `<log_dir>/<run>` whose points from `first_step` on replace earlier ones
    (TensorBoard's purge step); None unless `logger=tensorboard`."""
    if cfg.logger.kind != "tensorboard":
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(storage.join(log_dir(cfg), run), purge_step=first_step)


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
    """Write `round_scalars` at step `rp.round_idx` (nothing unless `logger=tensorboard`); returns them."""
    writer = open_writer(cfg, ROUND_RUN, rp.round_idx)
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
