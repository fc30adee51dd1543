"""One worker's training steps, without Ray: YOLOX's solver, `train_one_epoch` and `validate`, as plain
functions over a `TrainState` (the shape of torchvision's references/detection/engine.py).

    state = make_state(model, tc, global_batch, steps_per_epoch, device)  # model on device, maybe DDP
    losses = train_one_epoch(state, loader, epoch, no_aug=epoch >= tc.epochs - tc.no_aug_epochs)
    map50 = validate(state, val_samples, val_labels, input_size, tc.val_batch_size, num_classes, max_pixels)

Per YOLOX (yolox/core/trainer.py, yolox/config.py):
  * solver: SGD nesterov with YOLOX's parameter groups (`YoloxConfig.get_optimizer`: no decay on BN
    weights and biases), lr = basic_lr_per_img x global batch, `LRScheduler("yoloxwarmcos")` (warmup,
    cosine, min lr in the last no-aug epochs), EMA of the weights (`ModelEMA`, decay 0.9998), AMP on CUDA;
  * the last `no_aug_epochs` epochs: mosaic and mixup off, L1 loss on (`set_no_aug`). (YOLOX's trainer
    closes mosaic one epoch early, at `epoch + 1 == max_epoch - no_aug_epochs`; we close it for exactly
    the last `no_aug_epochs`.)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from yolox.config import YoloxConfig
from yolox.utils import LRScheduler, ModelEMA

from raylib import detect, metrics
from raylib.config import TrainConfig
from raylib.console import eta_text
from raylib.model import unwrap
from raylib.training.data import Sample

EMA_DECAY = 0.9998  # yolox/core/trainer.py
# GradScaler's first scale. YOLOX feeds raw 0-255 pixels, so the stem's weight gradient is ~100x that of a
# network on normalised inputs (131 at scale 1 for a fresh YOLOX-nano, batch 4); at torch's default 2**16 the
# fp16 gradients overflow and the scaler skips its first 8 steps halving down to 2**8 (issue 10: "AMP does not
# train" was those skipped steps). Starting at 2**8 skips none; the scaler still grows and backs off as usual.
AMP_INIT_SCALE = 2.0**8
# The parts of YOLOX's total_loss (yolox/models/yolo_head.py; iou_loss already x reg_weight 5, l1_loss 0
# until the no-aug epochs): total_loss is their sum.
LOSS_PARTS = ("iou_loss", "conf_loss", "cls_loss", "l1_loss")


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, global_batch: int) -> torch.optim.Optimizer:
    """SGD nesterov with YOLOX's parameter groups, built by the package's own `get_optimizer`, less the
    parameters frozen by `raylib.training.freeze`."""
    exp = YoloxConfig(name="raylib")
    exp.model = unwrap(model)
    exp.warmup_epochs, exp.warmup_lr = tc.warmup_epochs, tc.warmup_lr
    exp.basic_lr_per_img, exp.momentum, exp.weight_decay = tc.basic_lr_per_img, tc.momentum, tc.weight_decay
    optimizer = exp.get_optimizer(global_batch)
    for group in optimizer.param_groups:  # the package groups every parameter; frozen ones (train.freeze) stay out
        group["params"] = [parameter for parameter in group["params"] if parameter.requires_grad]
    return optimizer


def make_scheduler(tc: TrainConfig, global_batch: int, steps_per_epoch: int) -> LRScheduler:
    return LRScheduler("yoloxwarmcos", tc.basic_lr_per_img * global_batch, steps_per_epoch, tc.epochs,
                       warmup_epochs=tc.warmup_epochs, warmup_lr_start=tc.warmup_lr,
                       no_aug_epochs=tc.no_aug_epochs, min_lr_ratio=tc.min_lr_ratio)


@dataclass
class TrainState:
    """Everything one training step touches; `model` may be DDP-wrapped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    device: torch.device
    amp: bool
    initial_lr: float
    step: int = 0  # optimizer steps done in total

    def lr(self) -> float:
        # As YOLOX's trainer: the first step uses the optimizer's initial lr, step i the schedule at i.
        return self.initial_lr if self.step == 0 else self.scheduler.update_lr(self.step)


def make_state(model: torch.nn.Module, tc: TrainConfig, global_batch: int, steps_per_epoch: int,
               device: torch.device) -> TrainState:
    """Optimizer, schedule, EMA and AMP scaler for `model` (already on `device`, maybe DDP-wrapped)."""
    optimizer = make_optimizer(model, tc, global_batch)
    amp = tc.amp and device.type == "cuda"
    return TrainState(
        model=model, optimizer=optimizer, scheduler=make_scheduler(tc, global_batch, steps_per_epoch),
        scaler=make_scaler(device, amp), ema=ModelEMA(unwrap(model), EMA_DECAY) if tc.ema else None,
        device=device, amp=amp, initial_lr=optimizer.param_groups[0]["lr"],
    )


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, init_scale=AMP_INIT_SCALE, enabled=enabled)


def train_step(state: TrainState, images: torch.Tensor, targets: torch.Tensor,
               parts_sum: torch.Tensor | None = None) -> torch.Tensor:
    """One YOLOX step: loss of model(images, targets), backward, SGD, EMA update. Returns the loss;
    `parts_sum` (shape (len(LOSS_PARTS),), on the device) gets the step's loss parts added."""
    lr = state.lr()
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(state.device, non_blocking=True).float()  # uint8 from the loader (_collate)
    targets = targets.to(state.device, non_blocking=True)
    with torch.autocast(device_type=state.device.type, dtype=torch.float16, enabled=state.amp):
        outputs = state.model(images, targets)
    loss = outputs["total_loss"]
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(unwrap(state.model))
    state.step += 1
    if parts_sum is not None:  # l1_loss is a Python 0.0 while L1 is off
        parts_sum += torch.stack([torch.as_tensor(outputs[name], device=state.device).detach().float()
                                  for name in LOSS_PARTS])
    return loss.detach()


def set_no_aug(loader: torch.utils.data.DataLoader, model: torch.nn.Module, no_aug: bool) -> None:
    """The last epochs of YOLOX: mosaic (and with it mixup) off, L1 loss on. As the package's
    `DataLoader.close_mosaic`: the flag is the batch sampler's, sent with every index."""
    loader.batch_sampler.mosaic = not no_aug
    unwrap(model).head.use_l1 = no_aug


def train_one_epoch(state: TrainState, loader: torch.utils.data.DataLoader, epoch: int, no_aug: bool,
                    on_step: Callable[[], None] | None = None) -> dict[str, float]:
    """Epoch `epoch` of `loader` (from `raylib.training.data.make_loader`), one `train_step` per batch;
    returns this rank's mean `total_loss` and mean LOSS_PARTS. `on_step` runs after every step (tests
    inject a worker failure with it)."""
    set_no_aug(loader, state.model, no_aug)
    loader.batch_sampler.set_epoch(epoch)  # a resumed run repeats this epoch's batches
    loss_sum = torch.zeros((), device=state.device)  # summed on the device: no sync per step
    parts_sum = torch.zeros(len(LOSS_PARTS), device=state.device)
    for images, targets in loader:
        loss_sum += train_step(state, images, targets, parts_sum)
        if on_step is not None:
            on_step()
    parts = (parts_sum / len(loader)).tolist()
    return {"total_loss": float(loss_sum) / len(loader), **dict(zip(LOSS_PARTS, parts))}


def validate(state: TrainState, val_samples: list[Sample], val_labels: pa.Table, input_size: int,
             batch_size: int, num_classes: int, max_pixels: int | None = None) -> float | None:
    """AP50 of the EMA model on val: each rank detects on its shard; detections are all-gathered."""
    import torch.distributed as dist

    eval_model = state.ema.ema if state.ema is not None else unwrap(state.model)
    items = [(sample.image_id, sample.path) for sample in val_samples]
    detections, failed = detect.detect_images(eval_model, items, input_size, max_pixels, batch_size, state.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (detections, failed))
        detections = detect.concat([frame for frame, _ in gathered])
        failed = [image_id for _, ids in gathered for image_id in ids]
    if failed:
        val_labels = val_labels.filter(pc.invert(pc.is_in(val_labels.column("image_id"), pa.array(failed, pa.string()))))
    result = metrics.ap50_per_class(detections, metrics.labels_to_ground_truth(val_labels), num_classes)
    return None if np.isnan(result["map50"]) else float(result["map50"])


def epoch_progress(epoch: int, epochs: int, loss: float, lr: float, images_per_s: float,
                   seconds_per_epoch: float) -> dict:
    """What one epoch reports to Ray Train and prints: `eta_s` = epochs left x the mean epoch time
    of this attempt (validation included)."""
    return {"epoch": epoch, "epochs": epochs, "loss": loss, "lr": lr, "images_per_s": images_per_s,
            "eta_s": (epochs - epoch) * seconds_per_epoch}


def progress_line(progress: dict) -> str:
    """`[train] epoch 3/60  loss 7.412  lr 2.00e-02  41.3 img/s  ETA 2m05s`"""
    return (f"[train] epoch {progress['epoch']}/{progress['epochs']}  loss {progress['loss']:.3f}  "
            f"lr {progress['lr']:.2e}  {progress['images_per_s']:.1f} img/s  ETA {eta_text(progress['eta_s'])}")
