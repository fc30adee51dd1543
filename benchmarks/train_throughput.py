"""Training throughput: our YOLOX step against the yolox package's own step, same model/batch/device.

    python benchmarks/train_throughput.py                                   # CPU: nano, input 256, batch 8
    python benchmarks/train_throughput.py --device cuda --size s --input 640 --batch 64

Measured, in images/s, in one process and one run:
  yolox_step      the package's training step as yolox/core/trainer.py `train_one_iter` does it:
                  model(inputs, targets) (the package's loss), backward, SGD step (`YoloxConfig.get_optimizer`
                  groups), EMA update, lr from `YoloxConfig.get_lr_scheduler`; AMP on CUDA;
  our_step        raylib.train.train_step on the same batches: the same work, our code;
  our_step_data   our_step fed by our data path (LabelledImages + the package's MosaicDetection/TrainTransform,
                  num_loader_workers loader processes): the per-step work of train_loop_per_worker;
  trainer         end to end through Ray Train's TorchTrainer with 1 worker (`train_model`): training images
                  per second of wall time, start-up, validation and checkpoints included; and the same
                  run's steady epochs (per-epoch training time only, from the run's history).
Step timings alternate yolox/ours over several rounds and report the median, so that a noisy neighbour
on a shared machine hits both. The ratio printed is ours / yolox (1.0 = no overhead).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa
import torch

from raylib import schemas, storage, train
from raylib.config import Config, ModelConfig, TrainConfig
from raylib.model import build_model

CLASSES = ["circle", "square", "triangle", "star"]


def make_images(root: str, n: int, seed: int = 0) -> tuple[str, str]:
    """n JPEGs (240x320 with 1-4 filled shapes) + a manifest and a labels table (all `train`, 2 `val`)."""
    rng = np.random.default_rng(seed)
    ids, uris, splits, objects = [], [], [], []
    for i in range(n):
        image = rng.integers(60, 160, (240, 320, 3), dtype=np.uint8)
        objs = []
        for _ in range(int(rng.integers(1, 5))):
            x1, y1 = int(rng.integers(0, 250)), int(rng.integers(0, 170))
            w, h = int(rng.integers(16, 70)), int(rng.integers(16, 70))
            class_id = int(rng.integers(0, len(CLASSES)))
            cv2.rectangle(image, (x1, y1), (x1 + w, y1 + h), (60 * class_id, 255 - 60 * class_id, 128), -1)
            objs.append({"class_id": class_id, "x1": float(x1), "y1": float(y1), "x2": float(x1 + w),
                         "y2": float(y1 + h), "difficult": False})
        path = os.path.join(root, f"{i:05d}.jpg")
        cv2.imwrite(path, image)
        ids.append(f"{i:05d}")
        uris.append(path)
        splits.append("val" if i >= n - 2 else "train")
        objects.append(objs)
    manifest, labels = os.path.join(root, "pool.parquet"), os.path.join(root, "labels.parquet")
    storage.write_table(pa.table({"image_id": ids, "uri": uris}), manifest)
    table = pa.table({"image_id": ids, "split": splits, "round_added": pa.array([0] * n, pa.int16()),
                      "objects": pa.array(objects, pa.list_(schemas.OBJECT))})
    storage.write_table(schemas.check(table, schemas.LABELS, "labels"), labels)
    return labels, manifest


def yolox_step_fn(model: torch.nn.Module, device: torch.device, batch: int, iters_per_epoch: int):
    """The package's step as yolox/core/trainer.py `train_one_iter` does it: forward with its loss,
    backward, SGD step, EMA update (`use_model_ema` is on in its configs), lr from its scheduler.
    Only its logging meter is left out."""
    from yolox.config import YoloxConfig
    from yolox.utils import LRScheduler, ModelEMA

    exp = YoloxConfig(name="bench")
    exp.model, exp.warmup_epochs = model, 0
    optimizer = exp.get_optimizer(batch)
    scheduler = exp.get_lr_scheduler(exp.basic_lr_per_img * batch, iters_per_epoch)
    assert isinstance(scheduler, LRScheduler)
    ema = ModelEMA(model, 0.9998)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    progress = [1]

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=amp):
            loss = model(images, targets)["total_loss"]
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        lr = scheduler.update_lr(progress[0] + 1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        progress[0] += 1

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches: list, device: torch.device) -> float:
    """Seconds per step over `batches` (after the caller's warm-up)."""
    sync(device)
    started = time.perf_counter()
    for images, targets in batches:
        step(images, targets)
    sync(device)
    return (time.perf_counter() - started) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="nano")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--trainer-epochs", type=int, default=3, help="0 skips the TorchTrainer run")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n_images = max(4 * args.batch, 32)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    print(f"model yolox_{args.size}, input {args.input}, batch {args.batch}, {n_images} generated images")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as root:
        labels, manifest = make_images(root, n_images)
        cfg = Config(model=ModelConfig(size=args.size, input_size=args.input),
                     train=TrainConfig(epochs=max(args.trainer_epochs, 1), batch_size=args.batch, num_workers=1,
                                       use_gpu=device.type == "cuda", cpus_per_worker=float(os.cpu_count() or 1),
                                       warmup_epochs=0, no_aug_epochs=0, eval_interval=max(args.trainer_epochs, 1),
                                       num_loader_workers=args.loader_workers, max_failures=0))
        samples, _ = train.load_split(labels, manifest, "train", 0, 1, train.ImageCache(os.path.join(root, "cache")))
        dataset = train.make_train_dataset(samples, cfg)
        n_steps = args.steps + 1
        fixed = list(train.make_loader(dataset, args.batch, n_steps, seed=0))  # same batches for both steps

        ours_model = build_model(args.size, len(CLASSES)).to(device)
        yolox_model = build_model(args.size, len(CLASSES)).to(device)
        yolox_model.load_state_dict(ours_model.state_dict())
        state = train.make_state(ours_model, cfg, args.batch, n_steps, device)
        state.step = 1  # past the first step's special-cased lr, as in the middle of training
        def ours(images: torch.Tensor, targets: torch.Tensor) -> None:
            train.train_step(state, images, targets)

        yolox = yolox_step_fn(yolox_model, device, args.batch, n_steps)
        for step in (yolox, ours):  # warm-up (allocator, cudnn autotune, first-call overheads)
            step(*fixed[0])

        times: dict[str, list[float]] = {"yolox_step": [], "our_step": [], "our_step_data": []}
        for _ in range(args.rounds):
            times["yolox_step"].append(time_steps(yolox, fixed[1:], device))
            times["our_step"].append(time_steps(ours, fixed[1:], device))
            loader = train.make_loader(dataset, args.batch, args.steps, seed=1, num_workers=args.loader_workers)
            sync(device)
            started = time.perf_counter()
            for images, targets in loader:
                ours(images, targets)
            sync(device)
            times["our_step_data"].append((time.perf_counter() - started) / args.steps)
        rates = {name: args.batch / statistics.median(values) for name, values in times.items()}
        for name, rate in rates.items():
            print(f"{name:15s} {rate:8.2f} images/s   (median of {args.rounds} x {args.steps} steps)")
        print(f"ratio our_step / yolox_step      = {rates['our_step'] / rates['yolox_step']:.3f}")
        print(f"ratio our_step_data / yolox_step = {rates['our_step_data'] / rates['yolox_step']:.3f}")

        if args.trainer_epochs > 0:
            import ray

            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     num_cpus=os.cpu_count(), num_gpus=1 if device.type == "cuda" else 0)
            started = time.perf_counter()
            result = train.train_model(cfg, labels, manifest, os.path.join(root, "out"), CLASSES)
            wall = time.perf_counter() - started
            ray.shutdown()
            n_train = len(samples)
            steps_per_epoch = -(-n_train // args.batch)
            trained = result.epochs * steps_per_epoch * args.batch
            steady = [h["train_images_per_s"] for h in result.history if h["epoch"] > 1]
            print(f"trainer (1 worker) {trained / wall:8.2f} images/s wall ({trained} images in {wall:.1f}s, "
                  "start-up, validation and checkpoints included)")
            if steady:
                rate = statistics.median(steady)
                print(f"trainer steady     {rate:8.2f} images/s (epochs after the first, training time only)")
                print(f"ratio trainer steady / yolox_step = {rate / rates['yolox_step']:.3f}")


if __name__ == "__main__":
    main()
