"""What one Ray Train worker does (`train_loop_per_worker`): load its shard, build the model, train epoch
by epoch, validate and report checkpoints. The pieces are plain functions elsewhere: the data in
`raylib.training.data`, the steps and validation in `raylib.training.engine`, checkpoints in `raylib.training.checkpoints`.

Each rank trains on its shard (by rank) of the `train` split. Every `eval_interval` epochs and at the
last, the EMA model's AP50 on `val` (each rank runs its shard of val; detections are gathered) goes into
a checkpoint; the epochs between report progress only. A restarted worker group (FailureConfig) or a
second call with the same `out_dir` continues from the latest checkpoint.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from raylib import tracking
from raylib.runtime import cpu_threads
from raylib.training.checkpoints import report, restore
from raylib.config import ModelConfig, TrainConfig
from raylib.training.freeze import freeze_model
from raylib.training.iou_aware import make_iou_aware
from raylib.model import build_model, load_weights
from raylib.training.data import ImageCache, load_split, make_loader, make_train_dataset
from raylib.training.engine import (TrainState, epoch_progress, make_state, progress_line, train_one_epoch,
                                 validate)


@dataclass(frozen=True)
class TrainingSetup:
    """What training reads of the config (stages.training builds it): its own slice, the model, the
    run's seed, and where rank 0 logs its epochs (`logger`, resolved on the driver)."""
    train: TrainConfig
    model: ModelConfig
    seed: int = 0
    epoch_log: tracking.EpochLog = tracking.EpochLog("none")


@dataclass(frozen=True)
class WorkerArgs:
    """What `train_model` hands every worker (pickled by Ray once per worker)."""

    setup: TrainingSetup
    labels_uri: str
    manifest_uri: str
    class_names: tuple[str, ...]
    init_weights: str | None = None  # weights to start from (None: the model's initialisation)
    max_pixels: int | None = None  # larger images are left out (None: the decoder's default)
    on_step: Callable[[int, int, int], None] | None = None  # (epoch, rank, world_size) after each step: tests
    round_idx: int = 0  # the loop's round: tracking step of epoch e = round_idx * epochs + e (cfg.logger)


def train_loop_per_worker(args: WorkerArgs) -> None:
    """Ray Train worker: train this rank's shard, evaluate on val, report checkpoints (see module doc)."""
    import ray.train
    import ray.train.torch

    _quiet_logs()
    setup, tc = args.setup, args.setup.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(tc.cpus_per_worker, tc.torch_threads))
    num_classes = len(args.class_names)

    with tempfile.TemporaryDirectory(prefix="raylib-train-images-") as cache_dir:
        cache = ImageCache(cache_dir)
        train_samples, train_labels = load_split(args.labels_uri, args.manifest_uri, "train", rank, world,
                                                 cache, args.max_pixels)
        if not train_samples:
            raise ValueError(f"rank {rank}: no readable training image in labels '{args.labels_uri}' "
                             "(empty train split, or every image failed to load; see the warnings above)")
        val_samples, val_labels = load_split(args.labels_uri, args.manifest_uri, "val", rank, world,
                                             cache, args.max_pixels)
        local_batch = max(1, tc.batch_size // world)
        global_batch = local_batch * world
        steps_per_epoch = max(1, -(-train_labels.num_rows // global_batch))

        state = _initial_state(args, global_batch, steps_per_epoch, device)
        start_epoch, history = restore(state, ray.train.get_checkpoint())
        dataset = make_train_dataset(train_samples, tc, setup.model.input_size, args.max_pixels,
                                     resized_dir=os.path.join(cache_dir, "resized"))
        loader = make_loader(dataset, local_batch, steps_per_epoch,
                             seed=setup.seed * 100_003 + rank, num_workers=tc.num_loader_workers,
                             pin_memory=device.type == "cuda")

        # Rank 0 logs the epochs (logger=tensorboard); a resumed attempt replaces its points from here on.
        writer = (tracking.open_writer(setup.epoch_log, tracking.TRAIN_RUN,
                                       tracking.epoch_step(args.round_idx, tc.epochs, start_epoch + 1))
                  if rank == 0 and start_epoch < tc.epochs else None)
        attempt_started = time.time()
        for epoch in range(start_epoch, tc.epochs):
            started = time.time()
            on_step = functools.partial(args.on_step, epoch, rank, world) if args.on_step else None
            losses = train_one_epoch(state, loader, epoch, no_aug=epoch >= tc.epochs - tc.no_aug_epochs,
                                     on_step=on_step)
            loss = losses["total_loss"]
            train_seconds = time.time() - started
            images_per_s = steps_per_epoch * global_batch / train_seconds
            progress = epoch_progress(epoch + 1, tc.epochs, loss, state.lr(), images_per_s,
                                      (time.time() - attempt_started) / (epoch + 1 - start_epoch))
            if rank == 0:  # around Ray Train's print patch, which would log it and print it again
                print(progress_line(progress), file=sys.__stdout__, flush=True)
            if writer is not None:
                tracking.log_epoch(writer, tracking.epoch_step(args.round_idx, tc.epochs, epoch + 1), losses,
                                   state.lr(), images_per_s)
            if (epoch + 1) % tc.eval_interval and epoch + 1 < tc.epochs:
                ray.train.report(progress, checkpoint=None)  # every rank reports, as Ray Train requires
                continue
            map50 = validate(state, val_samples, val_labels, setup.model.input_size, tc.val_batch_size, num_classes,
                             args.max_pixels)
            history.append({
                "epoch": epoch + 1, "val_map50": map50, "loss": loss,
                "lr": state.lr(), "no_aug": not loader.batch_sampler.mosaic, "attempt_start_epoch": start_epoch,
                "train_seconds": round(train_seconds, 2), "eval_seconds": round(time.time() - started - train_seconds, 2),
                "train_images_per_s": round(images_per_s, 2),
            })
            report(state, history, setup.model.size, list(args.class_names), rank, progress)
        if writer is not None:
            writer.close()


def _initial_state(args: WorkerArgs, global_batch: int, steps_per_epoch: int, device: torch.device) -> TrainState:
    """The model (seeded, maybe IoU-aware, maybe from `init_weights`, maybe partly frozen: train.freeze,
    DDP-wrapped on `device`) with a fresh optimizer, schedule, EMA and scaler; `restore` then loads a
    checkpoint's over them."""
    import ray.train.torch

    setup = args.setup
    torch.manual_seed(setup.seed)  # same initial weights on every run of the same config (resume = rerun)
    model = build_model(setup.model.size, len(args.class_names))
    if setup.model.iou_aware_obj:  # objectness trained towards the assigned prediction's IoU (raylib.training.iou_aware)
        make_iou_aware(model)
    if args.init_weights:
        load_weights(model, args.init_weights)
    freeze_model(model, setup.train.freeze)  # before DDP and the optimizer: both leave frozen parameters out
    model = ray.train.torch.prepare_model(model)
    return make_state(model, setup.train, global_batch, steps_per_epoch, device)


def _quiet_logs() -> None:
    """Drop two kinds of per-step or per-epoch noise in the worker's console output."""
    # yolox's head calls the deprecated torch.cuda.amp.autocast every step: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
    # Ray Train logs every report in full ("Reporting training result N: ..."): the epoch line says it.
    # Its logger is named by file path (`logging.getLogger(__file__)` in ray.train.v2's execution context),
    # so neither RunConfig's LoggingConfig nor a logger name under "ray.train" reaches it, and Ray has no
    # public setting for it: the module is imported only to get at that logger.
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # another Ray version: its log lines stay
        pass
