"""Training checkpoints: what a worker reports to Ray Train at an evaluation, and how it resumes.

A checkpoint is a directory (rank 0 writes it; Ray Train copies it to `<out_dir>/ray/train/epoch_NNNN/`):
  * `model.pt`     EMA weights (`raylib.model.save_weights`): what the round's model becomes if this
                   checkpoint has the best `val_map50`;
  * `state.pt`     model, optimizer, EMA, scaler, epoch and step as a plain dict (`state_dict`);
  * `history.json` one dict per evaluation so far, this run's earlier attempts included.

Ray keeps the best two by `val_map50`, plus the latest; a restarted worker group or a rerun of the same
`out_dir` gets the latest from `ray.train.get_checkpoint()` and continues from it (`restore`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import tempfile
from typing import Any

import torch

from raylib import paths
from raylib.model import save_weights, unwrap
from raylib.training.engine import TrainState

log = logging.getLogger(__name__)

NO_VAL_SCORE = -1.0  # reported as val_map50 when val has no ground truth (no selection signal)


def report(state: TrainState, history: list[dict], model_size: str, class_names: list[str], rank: int,
           progress: dict | None = None) -> None:
    """`ray.train.report` from every rank; rank 0 attaches the checkpoint directory."""
    import ray.train

    last = history[-1]
    reported = {**(progress or {}), "val_map50": NO_VAL_SCORE if last["val_map50"] is None else last["val_map50"],
                "epoch": last["epoch"], "loss": last["loss"], "lr": last["lr"]}
    if rank != 0:
        ray.train.report(reported, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="raylib-ckpt-") as directory:
        weights_model = state.ema.ema if state.ema is not None else state.model
        save_weights(weights_model, os.path.join(directory, paths.WEIGHTS_FILE), model_size, class_names)
        torch.save(state_dict(state, last["epoch"]), os.path.join(directory, paths.TRAIN_STATE_FILE))
        with open(os.path.join(directory, paths.TRAIN_HISTORY_FILE), "w") as handle:
            json.dump(history, handle, indent=2)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"epoch_{last['epoch']:04d}")


def state_dict(state: TrainState, epoch: int) -> dict:
    """Everything `restore` needs to continue after `epoch` epochs, as a plain dict (torch.save)."""
    return {
        "epoch": epoch,
        "step": state.step,
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.ema.state_dict() if state.ema is not None else None,
        "ema_updates": state.ema.updates if state.ema is not None else 0,
    }


def restore(state: TrainState, checkpoint: Any) -> tuple[int, list[dict]]:
    """Load model/optimizer/EMA/scaler/step from a Ray checkpoint; returns (epochs done, history)."""
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as directory:
        with open(os.path.join(directory, paths.TRAIN_STATE_FILE), "rb") as handle:
            saved = torch.load(io.BytesIO(handle.read()), map_location=state.device, weights_only=True)
        with open(os.path.join(directory, paths.TRAIN_HISTORY_FILE)) as handle:
            history = json.load(handle)
    unwrap(state.model).load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.ema.load_state_dict(saved["ema"])
        state.ema.updates = saved["ema_updates"]
    state.step = saved["step"]
    log.info("resumed from checkpoint at epoch %d", saved["epoch"])
    return int(saved["epoch"]), history


def read_checkpoint_file(checkpoint: Any, name: str) -> bytes:
    """One file of a Ray checkpoint, read through the checkpoint's own filesystem (local or S3)."""
    with checkpoint.filesystem.open_input_stream(posixpath.join(checkpoint.path, name)) as stream:
        return stream.read()
