"""Train YOLOX on the labelled set with Ray Train (DDP), following YOLOX's recipe (seed 6.3).

    result = train_model(setup, labels_uri, manifest_uri, out_dir, class_names, init_weights=None,
                         max_pixels=max_pixels)   # setup: stages.training(cfg)
    result.weights_uri  # <out_dir>/model.pt: EMA weights of the epoch with the best val mAP50

Reads a `TrainingSetup` (train and model slices, the seed, the epoch log). Here: the driver (`TorchTrainer` set-up, the best
checkpoint's weights copied out). Elsewhere, each a set of plain functions:
  * `raylib.training.data`    the DataLoader: a rank's shard copied and checked, YOLOX's augmentations,
                           seeded batches that are the same with any loader worker count and after a resume;
  * `raylib.training.engine`  YOLOX's solver (SGD nesterov, warmup-cosine lr, EMA, AMP on CUDA),
                           `train_one_epoch`, `validate` (AP50 of the EMA model on the `val` split);
  * `raylib.training.worker`  `train_loop_per_worker`: what one Ray Train worker does, epoch by epoch;
  * `raylib.training.checkpoints`   what is reported at each evaluation and resumed from.

YOLOX's multi-scale training (random input size per 10 iterations) is not used: one input size,
`model.input_size`, for training, evaluation and scoring. Every `eval_interval` epochs and at the last,
each worker reports `val_map50` with a checkpoint; Ray keeps the best two by `val_map50`, plus the latest.
A restarted worker group (FailureConfig) or a second call with the same `out_dir` resumes from the latest.
A `val` split without ground truth gives no selection signal: `val_map50` is reported as -1 and the
latest checkpoint wins.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from raylib import console, labels, paths, storage
from raylib.training.checkpoints import NO_VAL_SCORE, read_checkpoint_file
from raylib.training.worker import TrainingSetup, WorkerArgs, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_NAME = "train"  # Ray Train experiment name under <out_dir>/ray


@dataclass
class TrainResult:
    weights_uri: str  # <out_dir>/model.pt, EMA weights of the best checkpoint
    best_map50: float | None  # val mAP50 of that checkpoint; None when val had no ground truth
    best_epoch: int
    epochs: int  # epochs trained in total (including earlier attempts this run resumed)
    history: list[dict] = field(default_factory=list)  # one dict per evaluation
    run_path: str = ""  # Ray Train's experiment directory (checkpoints)


def train_model(setup: TrainingSetup, labels_uri: str, manifest_uri: str, out_dir: str, class_names: list[str],
                init_weights: str | None = None, max_pixels: int | None = None,
                on_step: Callable[[int, int, int], None] | None = None, round_idx: int = 0) -> TrainResult:
    """Train on the `train` split of `labels_uri` (images from `manifest_uri`), select on `val`.

    Writes Ray Train's checkpoints under `<out_dir>/ray/train/` and the best EMA weights to
    `<out_dir>/model.pt`. Calling again with the same `out_dir` resumes from the latest checkpoint.
    `max_pixels`: larger images are left out (None: the decoder's default). `on_step(epoch, rank,
    world_size)` runs in each worker after every optimizer step (tests inject failures with it).
    `round_idx`: the loop's round, for the tracking step of each epoch (`setup.epoch_log`, raylib/tracking.py).
    """
    from ray.train import CheckpointConfig, ControllerError, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if labels.split_counts(labels_uri).get("train", 0) == 0:
        raise ValueError(f"labels '{labels_uri}' have no rows with split == 'train': nothing to train on; "
                         "label some images (or check the split column) first")
    tc = setup.train
    args = WorkerArgs(setup=setup, labels_uri=labels_uri, manifest_uri=manifest_uri,
                      class_names=tuple(class_names), init_weights=init_weights, max_pixels=max_pixels,
                      on_step=on_step, round_idx=round_idx)

    def trainer() -> TorchTrainer:
        return TorchTrainer(
            functools.partial(train_loop_per_worker, args),  # typed arguments, not Ray's train_loop_config dict
            torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                         resources_per_worker={"CPU": tc.cpus_per_worker}),
            run_config=RunConfig(
                storage_path=_storage_path(paths.train_ray_dir(out_dir)),
                name=RUN_NAME,
                checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_map50",
                                                   checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=tc.max_failures),
                # Ray Train's own console lines (resource requests, worker group start, every report and
                # checkpoint in full, "safe to ignore" tracebacks of a busy CPU) at ERROR only: our epoch
                # lines say the progress, and Ray's session log files still hold every level.
                logging_config=LoggingConfig(log_level="ERROR"),
            ),
        )

    try:
        result = trainer().fit()
    except ControllerError as error:
        # Ray Train's controller itself failed (seen once in CI under load: "Destroying worker since its
        # placement group was removed"); a failure of our training function is a WorkerGroupError and is
        # not retried here. A new trainer of the same run resumes from its last checkpoint.
        log.warning("Ray Train's controller failed (%s); training again from the last checkpoint",
                    str(error).splitlines()[0])
        result = trainer().fit()
    if not result.best_checkpoints:
        raise RuntimeError(f"training in '{out_dir}' finished without reporting a checkpoint")
    best_checkpoint, best_metrics = max(result.best_checkpoints,
                                        key=lambda item: (item[1]["val_map50"], item[1]["epoch"]))
    weights_uri = paths.train_weights(out_dir)
    storage.write_bytes(weights_uri, read_checkpoint_file(best_checkpoint, paths.WEIGHTS_FILE))
    history = json.loads(read_checkpoint_file(result.checkpoint, paths.TRAIN_HISTORY_FILE))
    storage.write_text(paths.train_history(out_dir), json.dumps(history, indent=2))
    for entry in history:  # the job log's copy of the epochs rank 0 printed (the screen had them from Ray)
        val = "-" if entry["val_map50"] in (None, NO_VAL_SCORE) else f"{entry['val_map50']:.4f}"
        log.info(f"[train] epoch {entry['epoch']}/{tc.epochs}  loss {entry['loss']:.3f}  lr {entry['lr']:.2e}  "
                 f"{entry['train_images_per_s']:.1f} img/s  val mAP50 {val}", extra=console.JOB_LOG_ONLY)
    best_map50 = best_metrics["val_map50"]
    return TrainResult(
        weights_uri=weights_uri,
        best_map50=None if best_map50 == NO_VAL_SCORE else float(best_map50),
        best_epoch=int(best_metrics["epoch"]),
        epochs=int(result.metrics["epoch"]) if result.metrics else int(best_metrics["epoch"]),
        history=history,
        run_path=str(result.path),
    )


def _storage_path(path: str) -> str:
    return path if storage.is_s3(path) else os.path.abspath(path)

