"""Experiment tracking (raylib/tracking.py): `logger=tensorboard` writes per-epoch and per-round scalars
that TensorBoard's own reader reads back; a rerun replaces points instead of doubling them;
`logger=mlflow` sends the same scalars to one MLflow run per run root, read back with MLflow's own
`search_runs`. A whole loop's TensorBoard scalars (and a killed, resumed run's) are checked in
test_loop_e2e, on its reference run; a whole loop's MLflow run in test_own_pool's data=coco loop."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from hydra import compose, initialize_config_dir

from raylib import schemas, storage, tracking
from raylib.config import Config, ConfigError, LoggerConfig, to_config
from raylib.paths import RoundPaths
from tests.helpers import tensorboard_scalars

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
CLASSES = ["circle", "square", "triangle", "star"]


def _write_round(run_root: str) -> RoundPaths:
    """Round 1's evaluation files and round 0's selection, as the stages write them."""
    rp, previous = RoundPaths(run_root, 1), RoundPaths(run_root, 0)
    storage.write_text(rp.metrics, json.dumps({"map50": 0.25, "ap50_per_class": {
        "circle": 0.5, "square": 0.0, "triangle": float("nan"), "star": 0.5}}))
    storage.write_text(rp.metrics_test, json.dumps({"map50": None, "ap50_per_class": {}}))
    storage.write_text(rp.calibration_summary, json.dumps({
        "spearman_loc_conf_true_iou": 0.4, "spearman_cls_conf_true_iou": None, "spearman_score_true_iou": 0.3}))
    storage.write_table(pa.table([
        pa.array(np.zeros(4, np.int16)), pa.array(["a", "b", "b", "c"]), pa.array(np.array([0, 0, 2, 2], np.int16)),
        pa.array(np.array([0.1, 0.2, 0.1, 0.3], np.float32)), pa.array(np.array([0, 1, 0, 1], np.int32))],
        schema=schemas.SELECTION), previous.selection)
    storage.write_table(pa.table([
        pa.array(np.zeros(3, np.int16)), pa.array(np.array([0, 1, 2], np.int16)),
        pa.array([0.2, None, 0.3], pa.float32()), pa.array([5, 0, 7], pa.int64())],
        schema=schemas.THRESHOLDS), previous.thresholds)
    return rp


def test_round_scalars_of_a_hand_written_round(tmp_path):
    rp = _write_round(str(tmp_path))
    scalars = tracking.round_scalars(rp, CLASSES, {"splits": {"train": 7, "val": 2, "test": 1}})
    assert scalars == pytest.approx({
        "round/map50": 0.25, "round/ap50/circle": 0.5, "round/ap50/square": 0.0, "round/ap50/star": 0.5,
        "round/labelled_images": 10, "round/spearman/loc_conf": 0.4, "round/spearman/score": 0.3,
        "round/selected_images": 3, "round/selected_images/circle": 2, "round/selected_images/square": 0,
        "round/selected_images/triangle": 2, "round/selected_images/star": 0,
        "round/threshold/circle": 0.2, "round/threshold/triangle": 0.3,
    })  # null test map50, NaN AP50 (no ground truth), null Spearman, null threshold: no point


def test_log_round_writes_tensorboard_scalars_and_a_rerun_replaces_them(tmp_path):
    rp = _write_round(str(tmp_path))
    cfg = Config(run_root=str(tmp_path), logger=LoggerConfig(kind="tensorboard"))
    for _ in range(2):  # a resumed loop logs a committed round again
        written = tracking.log_round(cfg, rp, CLASSES, {"splits": {"train": 10}})
    read = tensorboard_scalars(os.path.join(tmp_path, "tensorboard", tracking.ROUND_RUN))
    assert set(read) == set(written) and len(written) == 14
    assert all(points == [(1, pytest.approx(written[tag]))] for tag, points in read.items())
    assert tracking.log_round(Config(run_root=str(tmp_path / "none")), rp, CLASSES, {}) == {}
    assert not os.path.exists(tmp_path / "none")


def test_logger_presets_and_log_dir(tmp_path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = to_config(compose("config", overrides=[f"run_root={tmp_path}/run"]))
        assert cfg.logger == LoggerConfig()  # logger=none
        cfg = to_config(compose("config", overrides=["logger=tensorboard", f"run_root={tmp_path}/run"]))
        assert cfg.logger.kind == "tensorboard" and tracking.log_dir(cfg) == f"{tmp_path}/run/tensorboard"
        cfg = to_config(compose("config", overrides=["logger=tensorboard", "logger.log_dir=tb"]))
        assert tracking.log_dir(cfg) == os.path.join(os.getcwd(), "tb")
        with pytest.raises(ConfigError, match=r"^logger\.kind must be one of"):
            to_config(compose("config", overrides=["logger.kind=wandb"]))


def test_log_round_to_mlflow_reads_back_with_mlflows_client_and_a_rerun_adds_no_point(tmp_path):
    import mlflow

    run_root = str(tmp_path / "sweep" / "cls_iou_seed3")
    rp = _write_round(run_root)
    cfg = Config(run_root=run_root, seed=3, logger=LoggerConfig(kind="mlflow"))
    for _ in range(2):  # a resumed loop logs a committed round again
        written = tracking.log_round(cfg, rp, CLASSES, {"splits": {"train": 10}})
    # The default store: SQLite beside the sweep's runs, one experiment named after the sweep folder.
    store = f"sqlite:///{tmp_path}/sweep/mlflow.db"
    assert os.path.exists(tmp_path / "sweep" / "mlflow.db")
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["sweep"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics == pytest.approx(written) and len(written) == 14
    client = mlflow.MlflowClient(store)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "round/map50")] == [(1, 0.25)]
    assert run.data.tags["strategy"] == "cls_iou" and run.data.tags["seed"] == "3"
    assert run.data.tags["run_root"] == run_root and run.info.run_name == "cls_iou_seed3"
    assert run.data.params["strategy.k"] == "100" and run.data.params["train.epochs"] == "300"
    assert run.data.params["run_root"] == run_root

    # Another run of the sweep: its own MLflow run in the same experiment.
    other = Config(run_root=str(tmp_path / "sweep" / "random_seed3"), logger=LoggerConfig(kind="mlflow"))
    writer = tracking.open_writer(tracking.epoch_log(other), tracking.TRAIN_RUN, 1)
    tracking.log_epoch(writer, 1, {"total_loss": 2.5, "iou_loss": 1.0}, 0.01, 30.0)
    writer.close()
    runs = mlflow.search_runs(experiment_names=["sweep"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["cls_iou_seed3", "random_seed3"]
    second = next(r for r in runs if r.info.run_name == "random_seed3")
    assert second.data.metrics == pytest.approx({"train/loss_total": 2.5, "train/loss_iou": 1.0, "train/lr": 0.01,
                                                 "train/images_per_s": 30.0})
    tracking.end_run(other)
    assert client.get_run(second.info.run_id).info.status == "FINISHED"


def test_mlflow_with_a_run_root_on_s3_needs_a_tracking_server():
    cfg = Config(run_root="s3://bucket/runs/a", logger=LoggerConfig(kind="mlflow"))
    with pytest.raises(ConfigError) as refused:
        tracking.require_tracking(cfg)
    assert str(refused.value) == tracking.MLFLOW_ON_S3
    tracking.require_tracking(Config(run_root="s3://bucket/runs/a",
                                     logger=LoggerConfig(kind="mlflow", tracking_uri="http://127.0.0.1:5000")))
