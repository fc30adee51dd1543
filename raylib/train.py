"""Train YOLOX on the labelled set with Ray Train (DDP), following YOLOX's recipe (seed 6.3).

    result = train_model(cfg, labels_uri, manifest_uri, out_dir, class_names, init_weights=None,
                         max_pixels=cfg.score.max_pixels)
    result.weights_uri  # <out_dir>/model.pt: EMA weights of the epoch with the best val mAP50

Reads `cfg.train`, `cfg.model` and `cfg.seed` only. Images are decoded by `raylib.detect.read_image`,
the decoder scoring uses; a labelled image that can't be read, decoded or is over `max_pixels` is
logged and left out.

What one worker does (`train_loop_per_worker`), per YOLOX (yolox/core/trainer.py, yolox/config.py):
  * data: its shard (by rank) of the `train` split, images copied into a worker-private temp dir under
    hashed names, served by `LabelledImages` wrapped in the package's `MosaicDetection` + `TrainTransform`
    (mosaic, mixup, random affine, HSV, flip: the package's code, not ours). One DataLoader for the run,
    its `num_loader_workers` processes persistent across epochs; each index carries the mosaic flag (the
    package's `YoloBatchSampler`) and its own augmentation seed from (seed, epoch, position), so an epoch's
    batches are the same with any worker count and after a resume. Decoded, resized images are kept as
    .npy files next to the copies (a mosaic + mixup item reads 5 images);
  * solver: SGD nesterov with YOLOX's parameter groups (`YoloxConfig.get_optimizer`: no decay on BN
    weights and biases), lr = basic_lr_per_img x global batch, `LRScheduler("yoloxwarmcos")` (warmup,
    cosine, min lr in the last no-aug epochs), EMA of the weights (`ModelEMA`, decay 0.9998), AMP on CUDA;
  * the last `no_aug_epochs` epochs: mosaic and mixup off, L1 loss on. (YOLOX's trainer closes mosaic one
    epoch early, at `epoch + 1 == max_epoch - no_aug_epochs`; we close it for exactly the last
    `no_aug_epochs`.) YOLOX's multi-scale training (random input size per 10 iterations) is not used:
    one input size, `model.input_size`, for training, evaluation and scoring;
  * every `eval_interval` epochs and at the last: AP50 of the EMA model on the `val` split (each rank
    runs its shard of val; detections are gathered), `ray.train.report` with a checkpoint directory
    (rank 0 writes it) holding `model.pt` (EMA weights), `state.pt` (model, optimizer, EMA, scaler,
    epoch) and `history.json`. Ray keeps the best two by `val_map50`, plus the latest;
  * resume: a restarted worker group (FailureConfig) or a second call with the same `out_dir` continues
    from the latest checkpoint (`ray.train.get_checkpoint()`).

A `val` split without ground truth gives no selection signal: `val_map50` is reported as -1 and the
latest checkpoint wins. Images labelled with zero objects are trained on as background.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from yolox.config import YoloxConfig
from yolox.data import MosaicDetection, TrainTransform, YoloBatchSampler
from yolox.data.datasets import Dataset as YoloxDataset
from yolox.utils import LRScheduler, ModelEMA

from raylib import detect, labels, metrics, paths, storage
from raylib.console import eta_text
from raylib.config import Config, TrainConfig
from raylib.images import ImageError
from raylib.iou_aware import make_iou_aware
from raylib.model import build_model, load_weights, save_weights, unwrap

log = logging.getLogger(__name__)

RUN_NAME = "train"  # Ray Train experiment name under <out_dir>/ray
EMA_DECAY = 0.9998  # yolox/core/trainer.py
MAX_LABELS = 120  # TrainTransform(max_labels=120), as in YoloxConfig.get_data_loader
# GradScaler's first scale. YOLOX feeds raw 0-255 pixels, so the stem's weight gradient is ~100x that of a
# network on normalised inputs (131 at scale 1 for a fresh YOLOX-nano, batch 4); at torch's default 2**16 the
# fp16 gradients overflow and the scaler skips its first 8 steps halving down to 2**8 (issue 10: "AMP does not
# train" was those skipped steps). Starting at 2**8 skips none; the scaler still grows and backs off as usual.
AMP_INIT_SCALE = 2.0**8
NO_VAL_SCORE = -1.0  # reported as val_map50 when val has no ground truth (no selection signal)
FETCH_THREADS = 8


@dataclass
class TrainResult:
    weights_uri: str  # <out_dir>/model.pt, EMA weights of the best checkpoint
    best_map50: float | None  # val mAP50 of that checkpoint; None when val had no ground truth
    best_epoch: int
    epochs: int  # epochs trained in total (including earlier attempts this run resumed)
    history: list[dict] = field(default_factory=list)  # one dict per evaluation
    run_path: str = ""  # Ray Train's experiment directory (checkpoints)


# ------------------------------------------------------------------------------------------ driver


def train_model(cfg: Config, labels_uri: str, manifest_uri: str, out_dir: str, class_names: list[str],
                init_weights: str | None = None, max_pixels: int | None = None,
                on_step: Callable[[int, int, int], None] | None = None) -> TrainResult:
    """Train on the `train` split of `labels_uri` (images from `manifest_uri`), select on `val`.

    Writes Ray Train's checkpoints under `<out_dir>/ray/train/` and the best EMA weights to
    `<out_dir>/model.pt`. Calling again with the same `out_dir` resumes from the latest checkpoint.
    `max_pixels`: larger images are left out (None: the decoder's default). `on_step(epoch, rank,
    world_size)` runs in each worker after every optimizer step (tests inject failures with it).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if labels.split_counts(labels_uri).get("train", 0) == 0:
        raise ValueError(f"labels '{labels_uri}' have no rows with split == 'train': nothing to train on; "
                         "label some images (or check the split column) first")
    tc = cfg.train
    loop_config = {"cfg": cfg, "labels_uri": labels_uri, "manifest_uri": manifest_uri,
                   "class_names": list(class_names), "init_weights": init_weights, "max_pixels": max_pixels,
                   "on_step": on_step}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
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
    result = trainer.fit()
    if not result.best_checkpoints:
        raise RuntimeError(f"training in '{out_dir}' finished without reporting a checkpoint")
    best_checkpoint, best_metrics = max(result.best_checkpoints,
                                        key=lambda item: (item[1]["val_map50"], item[1]["epoch"]))
    weights_uri = paths.train_weights(out_dir)
    storage.write_bytes(weights_uri, _read_checkpoint_file(best_checkpoint, paths.WEIGHTS_FILE))
    history = json.loads(_read_checkpoint_file(result.checkpoint, paths.TRAIN_HISTORY_FILE))
    storage.write_text(paths.train_history(out_dir), json.dumps(history, indent=2))
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


def _read_checkpoint_file(checkpoint: Any, name: str) -> bytes:
    """One file of a Ray checkpoint, read through the checkpoint's own filesystem (local or S3)."""
    with checkpoint.filesystem.open_input_stream(posixpath.join(checkpoint.path, name)) as stream:
        return stream.read()


# ------------------------------------------------------------------------------------------ data


@dataclass
class Sample:
    image_id: str
    path: str  # local file
    targets: np.ndarray  # float32 [n, 5]: x1, y1, x2, y2, class_id in original pixels
    height: int
    width: int


class ImageCache:
    """Local copies of image URIs (local paths or s3://) in `root`, one file per URI named by the
    SHA-256 of the URI: never a path built from an image id, so no id can escape `root`."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path_for(self, uri: str) -> str:
        return os.path.join(self.root, hashlib.sha256(uri.encode("utf-8")).hexdigest())

    def fetch(self, uri: str) -> str:
        path = self.path_for(uri)
        if not os.path.exists(path):
            storage.write_bytes(path, storage.read_bytes(uri))  # atomic: temp file + rename
        return path


def load_split(labels_uri: str, manifest_uri: str, split: str, rank: int = 0, world_size: int = 1,
               cache: ImageCache | None = None, max_pixels: int | None = None) -> tuple[list[Sample], pa.Table]:
    """This rank's shard of `split`: copied to `cache`, decoded once to check it and get its size.

    Returns (samples of the shard, labels of the whole split). Images that are missing from the manifest,
    fail to copy or decode, or are over `max_pixels` are logged and left out; an empty split gives an
    empty shard.
    """
    split_labels, items, missing = labels.read_split(labels_uri, manifest_uri, split)
    if missing:
        log.warning("%d %s image(s) are not in manifest %s, e.g. %s; skipped", len(missing), split,
                    manifest_uri, missing[:3])
    items = sorted(items)
    shard = items[rank::world_size]
    if not shard and items and split == "train":
        shard = [items[rank % len(items)]]  # fewer images than workers: every rank still needs data
    objects = dict(zip(split_labels.column("image_id").to_pylist(), split_labels.column("objects").to_pylist()))
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:  # copies in threads, decoding here (detect.py)
        fetched = list(pool.map(lambda item: _fetch(item, cache), shard))
    samples = [_sample(item, path, objects[item[0]], max_pixels) for item, path in zip(shard, fetched)]
    return [s for s in samples if s is not None], split_labels


def _fetch(item: tuple[str, str], cache: ImageCache | None) -> str | OSError:
    try:
        return cache.fetch(item[1]) if cache else item[1]
    except OSError as exc:
        return exc


def _sample(item: tuple[str, str], path: str | OSError, objects: list[dict], max_pixels: int | None) -> Sample | None:
    image_id, uri = item
    try:
        if isinstance(path, OSError):
            raise path
        height, width = detect.read_image(path, image_id, max_pixels).shape[:2]
    except (OSError, ImageError) as exc:
        log.warning("labelled image '%s' (%s) left out of training: %s", image_id, uri, exc)
        return None
    targets = np.array([[o["x1"], o["y1"], o["x2"], o["y2"], o["class_id"]] for o in objects or []],
                       dtype=np.float32).reshape(-1, 5)
    return Sample(image_id, path, targets, height, width)


class LabelledImages(YoloxDataset):
    """Our samples in the interface `MosaicDetection` expects of a YOLOX dataset (like its VOCDetection):
    `pull_item(i)` -> (image resized to fit `input_dim`, targets [n, 5] x1y1x2y2+class scaled the same,
    (height, width), i); `load_anno(i)` -> those targets.

    With `resized_dir`, each image is decoded and resized once and kept there as a .npy file (whole
    uint8 pixels, shared by the loader processes of this dataset): a mosaic + mixup item pulls 5 images,
    and loading the array is ~10x cheaper than decoding the JPEG again (benchmarks/RESULTS.md)."""

    def __init__(self, samples: list[Sample], input_size: int, max_pixels: int | None = None,
                 resized_dir: str | None = None):
        super().__init__((input_size, input_size))
        self.samples = samples
        self.max_pixels = max_pixels
        self.preproc = None
        self.resized = ImageCache(resized_dir) if resized_dir and _fits_on_disk(resized_dir, samples, input_size) else None

    def __len__(self) -> int:
        return len(self.samples)

    def _ratio(self, index: int) -> float:
        sample = self.samples[index]
        return min(self.input_dim[0] / sample.height, self.input_dim[1] / sample.width)

    def load_anno(self, index: int) -> np.ndarray:
        targets = self.samples[index].targets.copy()
        targets[:, :4] *= self._ratio(index)
        return targets

    def pull_item(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
        sample = self.samples[index]
        return self._resized_image(index), self.load_anno(index), (sample.height, sample.width), index

    def _resized_image(self, index: int) -> np.ndarray:
        import cv2

        sample = self.samples[index]
        cached = self.resized.path_for(f"{sample.path}@{self.input_dim[0]}") + ".npy" if self.resized else None
        if cached and os.path.exists(cached):
            return np.load(cached)
        image = detect.read_image(sample.path, sample.image_id, self.max_pixels)
        ratio = self._ratio(index)
        image = cv2.resize(image, (int(sample.width * ratio), int(sample.height * ratio)),
                           interpolation=cv2.INTER_LINEAR)
        if cached:
            _save_array(cached, image)
        return image

    @YoloxDataset.mosaic_getitem
    def __getitem__(self, index: int):
        image, targets, info, index = self.pull_item(index)
        if self.preproc is not None:
            image, targets = self.preproc(image, targets, self.input_dim)
        return image, targets, info, index


def _fits_on_disk(directory: str, samples: list[Sample], input_size: int) -> bool:
    """Whether the resized copies of `samples` (at most input_size^2 x 3 bytes each) take under half
    of the free space where `directory` is; if not, images are decoded at every pull."""
    os.makedirs(directory, exist_ok=True)
    needed, free = len(samples) * input_size * input_size * 3, shutil.disk_usage(directory).free
    if needed > free // 2:
        log.warning("resized training images would take up to %.1f GB of the %.1f GB free in %s: not cached, "
                    "decoded at every use (slower loading)", needed / 1e9, free / 1e9, directory)
    return needed <= free // 2


def _save_array(path: str, array: np.ndarray) -> None:
    """np.save, atomically (loader processes may write the same image at once); a failed write (disk
    full) only costs the cache entry."""
    try:
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp", delete=False) as handle:
            np.save(handle, array)
        os.replace(handle.name, path)
    except OSError as exc:
        log.warning("resized image not cached at %s: %s", path, exc)


def make_train_dataset(samples: list[Sample], cfg: Config, max_pixels: int | None = None,
                       resized_dir: str | None = None) -> MosaicDetection:
    """The package's augmentation stack over our samples (as `YoloxConfig.get_data_loader` builds it);
    `resized_dir`: where to keep decoded, resized images (see `LabelledImages`)."""
    tc, size = cfg.train, cfg.model.input_size
    return MosaicDetection(
        LabelledImages(samples, size, max_pixels, resized_dir),
        img_size=(size, size),
        mosaic=True,
        preproc=TrainTransform(max_labels=MAX_LABELS, flip_prob=tc.flip_prob, hsv_prob=tc.hsv_prob),
        degrees=tc.degrees,
        translate=tc.translate,
        mosaic_scale=tuple(tc.mosaic_scale),
        mixup_scale=tuple(tc.mixup_scale),
        shear=tc.shear,
        enable_mixup=tc.mixup_prob > 0,
        mosaic_prob=tc.mosaic_prob,
        mixup_prob=tc.mixup_prob,
    )


class EpochSampler(torch.utils.data.Sampler):
    """`num_samples` indices of a dataset of `n` per epoch, from concatenated permutations seeded by
    (seed, epoch): every rank takes the same number of steps per epoch (DDP needs it) however its shard
    size differs, and epoch e draws the same order whether or not the process ran the epochs before it."""

    def __init__(self, n: int, num_samples: int, seed: int):
        self.n, self.num_samples, self.seed, self.epoch = n, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-self.num_samples // self.n))])
        return iter(int(i) for i in order[: self.num_samples])


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the item at `position` of `epoch`."""
    return int(np.random.SeedSequence((seed, epoch, position)).generate_state(1)[0])


class EpochBatchSampler(YoloBatchSampler):
    """Batches of (mosaic, index, item_seed) keys for `SeededItems`.

    The mosaic flag travels with each index, the package's `YoloBatchSampler` way: this object lives in
    the main process, so `set_no_aug` reaches persistent loader workers, which hold their own copy of
    the dataset. The item seed makes a batch a function of (seed, epoch, position) only: the same with 0
    or N workers, whichever worker draws it, and in a resumed run."""

    def __init__(self, sampler: EpochSampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False, mosaic=True)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[bool, int, int]]]:
        position = 0
        for batch in super().__iter__():
            yield [(mosaic, index, item_seed(self.sampler.seed, self.sampler.epoch, position + offset))
                   for offset, (mosaic, index) in enumerate(batch)]
            position += len(batch)


class SeededItems(torch.utils.data.Dataset):
    """`dataset[(mosaic, index)]` (the package's `mosaic_getitem` key) with `random` and `numpy.random`,
    which all of YOLOX's augmentations draw from, seeded by the key's item seed."""

    def __init__(self, dataset: MosaicDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[bool, int, int]):
        mosaic, index, seed = key
        random.seed(seed)
        np.random.seed(seed)
        return self.dataset[(mosaic, index)]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    # TrainTransform returns float32 images of whole 0-255 values: uint8 is exact and a quarter of the
    # bytes through shared memory, pinned memory and host-to-device copies (train_step makes them float).
    images = torch.from_numpy(np.stack([item[0] for item in batch]).astype(np.uint8))
    targets = torch.from_numpy(np.stack([item[1] for item in batch]))
    return images, targets


def _loader_worker_init(worker_id: int) -> None:
    # One loader process is one core's worth of work: cv2's own thread pool would compete with the other
    # loader processes and the training step (YOLOX's trainer sets the same, in `configure_module`).
    import cv2

    cv2.setNumThreads(0)


# Batches each loader worker prepares ahead (torch's default): a mosaic batch of 64 at 640 is ~80 MB of
# shared memory, so deeper queues cost memory for no gain once the workers keep up.
PREFETCH_BATCHES = 2


def make_loader(dataset: MosaicDetection, batch_size: int, steps: int, seed: int, num_workers: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """`steps` batches per epoch, for the whole run: call `loader.batch_sampler.set_epoch(e)` before
    iterating epoch e. Worker processes start at the first epoch and persist (no restart per epoch)."""
    return torch.utils.data.DataLoader(
        SeededItems(dataset), batch_sampler=EpochBatchSampler(EpochSampler(len(dataset), steps * batch_size, seed),
                                                              batch_size),
        num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory, worker_init_fn=_loader_worker_init,
        persistent_workers=num_workers > 0, prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
    )


# ------------------------------------------------------------------------------------------ solver


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, global_batch: int) -> torch.optim.Optimizer:
    """SGD nesterov with YOLOX's parameter groups, built by the package's own `get_optimizer`."""
    exp = YoloxConfig(name="raylib")
    exp.model = unwrap(model)
    exp.warmup_epochs, exp.warmup_lr = tc.warmup_epochs, tc.warmup_lr
    exp.basic_lr_per_img, exp.momentum, exp.weight_decay = tc.basic_lr_per_img, tc.momentum, tc.weight_decay
    return exp.get_optimizer(global_batch)


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


def make_state(model: torch.nn.Module, cfg: Config, global_batch: int, steps_per_epoch: int,
               device: torch.device) -> TrainState:
    """Optimizer, schedule, EMA and AMP scaler for `model` (already on `device`, maybe DDP-wrapped)."""
    tc = cfg.train
    optimizer = make_optimizer(model, tc, global_batch)
    amp = tc.amp and device.type == "cuda"
    return TrainState(
        model=model, optimizer=optimizer, scheduler=make_scheduler(tc, global_batch, steps_per_epoch),
        scaler=make_scaler(device, amp), ema=ModelEMA(unwrap(model), EMA_DECAY) if tc.ema else None,
        device=device, amp=amp, initial_lr=optimizer.param_groups[0]["lr"],
    )


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, init_scale=AMP_INIT_SCALE, enabled=enabled)


def train_step(state: TrainState, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One YOLOX step: loss of model(images, targets), backward, SGD, EMA update. Returns the loss."""
    lr = state.lr()
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(state.device, non_blocking=True).float()  # uint8 from the loader (_collate)
    targets = targets.to(state.device, non_blocking=True)
    with torch.autocast(device_type=state.device.type, dtype=torch.float16, enabled=state.amp):
        loss = state.model(images, targets)["total_loss"]
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(unwrap(state.model))
    state.step += 1
    return loss.detach()


def set_no_aug(loader: torch.utils.data.DataLoader, model: torch.nn.Module, no_aug: bool) -> None:
    """The last epochs of YOLOX: mosaic (and with it mixup) off, L1 loss on. As the package's
    `DataLoader.close_mosaic`: the flag is the batch sampler's, sent with every index."""
    loader.batch_sampler.mosaic = not no_aug
    unwrap(model).head.use_l1 = no_aug


# ------------------------------------------------------------------------------------------ worker


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: train this rank's shard, evaluate on val, report checkpoints (see module doc)."""
    import ray.train
    import ray.train.torch

    # yolox's head calls the deprecated torch.cuda.amp.autocast every step: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
    # Ray Train logs every report in full ("Reporting training result N: ..."): the epoch line says it.
    # Its logger is named by file, not under "ray.train", so RunConfig's LoggingConfig does not reach it.
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # another Ray version: its log lines stay
        pass
    cfg: Config = config["cfg"]
    tc = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    with tempfile.TemporaryDirectory(prefix="raylib-train-images-") as cache_dir:
        cache = ImageCache(cache_dir)
        max_pixels, on_step = config["max_pixels"], config["on_step"]
        train_samples, train_labels = load_split(config["labels_uri"], config["manifest_uri"], "train",
                                                 rank, world, cache, max_pixels)
        if not train_samples:
            raise ValueError(f"rank {rank}: no readable training image in labels '{config['labels_uri']}' "
                             "(empty train split, or every image failed to load; see the warnings above)")
        val_samples, val_labels = load_split(config["labels_uri"], config["manifest_uri"], "val",
                                             rank, world, cache, max_pixels)
        local_batch = max(1, tc.batch_size // world)
        global_batch = local_batch * world
        steps_per_epoch = max(1, -(-train_labels.num_rows // global_batch))

        torch.manual_seed(cfg.seed)  # same initial weights on every run of the same config (resume = rerun)
        model = build_model(cfg.model.size, len(config["class_names"]))
        if cfg.model.iou_aware_obj:  # objectness trained towards the assigned prediction's IoU (raylib.iou_aware)
            make_iou_aware(model)
        if config.get("init_weights"):
            load_weights(model, config["init_weights"])
        model = ray.train.torch.prepare_model(model)
        state = make_state(model, cfg, global_batch, steps_per_epoch, device)
        start_epoch, history = restore(state, ray.train.get_checkpoint())
        dataset = make_train_dataset(train_samples, cfg, max_pixels, resized_dir=os.path.join(cache_dir, "resized"))
        loader = make_loader(dataset, local_batch, steps_per_epoch,
                             seed=cfg.seed * 100_003 + rank, num_workers=tc.num_loader_workers,
                             pin_memory=device.type == "cuda")

        attempt_started = time.time()
        for epoch in range(start_epoch, tc.epochs):
            started = time.time()
            set_no_aug(loader, state.model, epoch >= tc.epochs - tc.no_aug_epochs)
            loader.batch_sampler.set_epoch(epoch)  # a resumed run repeats this epoch's batches
            loss_sum = torch.zeros((), device=device)
            for images, targets in loader:
                loss_sum += train_step(state, images, targets)
                if on_step is not None:
                    on_step(epoch, rank, world)
            train_seconds = time.time() - started
            progress = epoch_progress(epoch + 1, tc.epochs, float(loss_sum) / steps_per_epoch, state.lr(),
                                      steps_per_epoch * global_batch / train_seconds,
                                      (time.time() - attempt_started) / (epoch + 1 - start_epoch))
            if rank == 0:  # around Ray Train's print patch, which would log it and print it again
                print(progress_line(progress), file=sys.__stdout__, flush=True)
            if (epoch + 1) % tc.eval_interval and epoch + 1 < tc.epochs:
                ray.train.report(progress, checkpoint=None)  # every rank reports, as Ray Train requires
                continue
            map50 = validate(state, val_samples, val_labels, cfg, len(config["class_names"]), max_pixels)
            history.append({
                "epoch": epoch + 1, "val_map50": map50, "loss": float(loss_sum) / steps_per_epoch,
                "lr": state.lr(), "no_aug": not loader.batch_sampler.mosaic, "attempt_start_epoch": start_epoch,
                "train_seconds": round(train_seconds, 2), "eval_seconds": round(time.time() - started - train_seconds, 2),
                "train_images_per_s": round(steps_per_epoch * global_batch / train_seconds, 2),
            })
            report(state, history, cfg, config["class_names"], rank, progress)


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


def validate(state: TrainState, val_samples: list[Sample], val_labels: pa.Table, cfg: Config,
             num_classes: int, max_pixels: int | None = None) -> float | None:
    """AP50 of the EMA model on val: each rank detects on its shard; detections are all-gathered."""
    import torch.distributed as dist

    eval_model = state.ema.ema if state.ema is not None else unwrap(state.model)
    items = [(sample.image_id, sample.path) for sample in val_samples]
    detections, failed = detect.detect_images(eval_model, items, cfg.model.input_size, max_pixels,
                                              cfg.train.val_batch_size, state.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (detections, failed))
        detections = detect.concat([frame for frame, _ in gathered])
        failed = [image_id for _, ids in gathered for image_id in ids]
    if failed:
        val_labels = val_labels.filter(pc.invert(pc.is_in(val_labels.column("image_id"), pa.array(failed, pa.string()))))
    result = metrics.ap50_per_class(detections, metrics.labels_to_ground_truth(val_labels), num_classes)
    return None if np.isnan(result["map50"]) else float(result["map50"])


def report(state: TrainState, history: list[dict], cfg: Config, class_names: list[str], rank: int,
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
        save_weights(weights_model, os.path.join(directory, paths.WEIGHTS_FILE), cfg.model.size, class_names)
        torch.save(_state_dict(state, last["epoch"]), os.path.join(directory, paths.TRAIN_STATE_FILE))
        with open(os.path.join(directory, paths.TRAIN_HISTORY_FILE), "w") as handle:
            json.dump(history, handle, indent=2)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"epoch_{last['epoch']:04d}")


def _state_dict(state: TrainState, epoch: int) -> dict:
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
