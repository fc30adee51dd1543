"""Training throughput: our data path against the yolox package's loader, our step against its step.

    python benchmarks/train_throughput.py          # CPU, ~1 min: the loaders only, input 640, batch 8, 1 process
    python benchmarks/train_throughput.py --input 256 --steps 6 --trainer-epochs 3   # + steps and trainer
    python benchmarks/train_throughput.py --device cuda --size s --input 640 --batch 64 --loader-workers 12 \
        --steps 10 --trainer-epochs 3              # one GPU, < 5 min
    python benchmarks/train_throughput.py --freeze-sweep --size tiny --input 224 --steps 6 \
        --weights weights/yolox_tiny_camera_traps.pth   # train.freeze step cost only, ~2 min on 2 cores

Measured, in images/s, in one process and one run:
  loaders         Mosaic + MixUp at `--input` (the package's MosaicDetection/TrainTransform in both), on the
                  same generated VOC folder, with the same number of loader processes:
                  package = its `VOCDetection` (cv2.imread) in `MosaicDetection`, in a plain torch DataLoader;
                  ours    = `train_data.make_loader` over `LabelledImages` (our decoder), persistent workers.
                  Start-up (iter() to the first batch) and steady state (the batches after it) apart; the
                  ratio is ours / package per loader process (1.0 = as fast);
  yolox_step      the package's training step as yolox/core/trainer.py `train_one_iter` does it:
                  model(inputs, targets) (the package's loss), backward, SGD step (`YoloxConfig.get_optimizer`
                  groups), EMA update, lr from `YoloxConfig.get_lr_scheduler`; AMP on CUDA;
  our_step        raylib.training.engine.train_step on the same batches: the same work, our code;
  our_step_data   our_step fed by our loader (`--loader-workers` processes, built once, warmed up by one
                  epoch whose time is printed as start-up): the per-step work of train_loop_per_worker;
  trainer         (`--trainer-epochs` > 0) end to end through Ray Train's TorchTrainer with 1 worker
                  (`train_model`): start-up (wall time not spent in an epoch's training or validation) and
                  the steady epochs (epochs after the first, training time only, from the run's history).
  freeze sweep    (`--freeze-sweep`, instead of the above) our_step on the same batches from the same start
                  (`--weights`, else one fresh initialisation) per `train.freeze` setting: none (the baseline),
                  backbone, backbone_neck; the ratio is each setting's step time / none's.
Timings alternate the two sides over several rounds and report the median, so that a noisy neighbour on
a shared machine hits both. Ratios are ours / yolox.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa
import torch

from raylib import schemas, storage, synthetic
from raylib.training import train, data as train_data, engine as train_engine
from raylib.formats import voc
from raylib.config import FREEZE_CHOICES, Config, ModelConfig, SyntheticConfig, TrainConfig
from raylib.model import build_model, load_weights
from raylib.training.freeze import freeze_model
from raylib.stages import training

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


def make_voc(root: str, n: int) -> list[train_data.Sample]:
    """n generated VOC-sized images (375-500 px sides, 1-4 objects) as a VOC2007 folder under `root`
    (the layout the package's VOCDetection reads); returns the same images as our samples."""
    voc_root = os.path.join(root, "VOC2007")
    synthetic.generate(SyntheticConfig(num_pool=n, num_test=1, classes=CLASSES, min_size=375, max_size=500,
                                       empty_fraction=0.0, duplicate_fraction=0.0), voc_root)
    class_ids = {name: i for i, name in enumerate(CLASSES)}
    samples = []
    for image_id in storage.read_text(os.path.join(voc_root, "ImageSets", "Main", "trainval.txt")).split():
        ann = voc.read_voc(os.path.join(voc_root, "Annotations", f"{image_id}.xml"))
        targets = np.array([[o.x1, o.y1, o.x2, o.y2, class_ids[o.name]] for o in ann.objects], np.float32)
        samples.append(train_data.Sample(image_id, os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg"),
                                    targets.reshape(-1, 5), ann.height, ann.width))
    return samples


def package_loader(root: str, cfg: Config, batch: int, workers: int) -> torch.utils.data.DataLoader:
    """The package's data path: VocDetection + MosaicDetection + TrainTransform (our augmentation
    settings) in a plain torch DataLoader, workers set up as the package's trainer sets them up."""
    from yolox.data import MosaicDetection, TrainTransform, VocDetection, worker_init_reset_seed
    from yolox.data.datasets.voc import AnnotationTransform

    tc, size = cfg.train, cfg.model.input_size
    images = VocDetection(root, image_sets=[("2007", "trainval")], img_size=(size, size),
                          target_transform=AnnotationTransform({name: i for i, name in enumerate(CLASSES)}))
    dataset = MosaicDetection(
        images, img_size=(size, size), mosaic=True,
        preproc=TrainTransform(max_labels=train_data.MAX_LABELS, flip_prob=tc.flip_prob, hsv_prob=tc.hsv_prob),
        degrees=tc.degrees, translate=tc.translate, mosaic_scale=tuple(tc.mosaic_scale),
        mixup_scale=tuple(tc.mixup_scale), shear=tc.shear, enable_mixup=True, mosaic_prob=tc.mosaic_prob,
        mixup_prob=tc.mixup_prob)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                       worker_init_fn=lambda worker_id: (single_threaded_cv2(),
                                                                         worker_init_reset_seed(worker_id)))


def single_threaded_cv2() -> None:
    """As the package's tools/train.py sets up every process (`configure_module`)."""
    cv2.setNumThreads(0)


def time_loader(loader: torch.utils.data.DataLoader, batches: int) -> tuple[float, float]:
    """(seconds from iter() to the first batch, seconds per batch of the `batches` after it)."""
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return first - started, (time.perf_counter() - first) / batches


def compare_loaders(root: str, cfg: Config, args: argparse.Namespace) -> None:
    """Steady images/s per loader process of ours and the package's loader; the first round (loader
    processes starting, our resized-image cache filling) is printed apart as start-up."""
    workers, batches = args.loader_workers, args.loader_batches
    samples = make_voc(root, max(args.loader_images, args.batch * (batches + 1)))  # one epoch holds a round
    loaders = {
        "package": package_loader(root, cfg, args.batch, workers),
        "ours": train_data.make_loader(train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size, resized_dir=os.path.join(root, "resized")),
                                  args.batch, batches + 1, seed=0, num_workers=workers),
        "ours_decoding": train_data.make_loader(train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size), args.batch, batches + 1, seed=0,
                                           num_workers=workers),
    }
    print(f"loaders: Mosaic + MixUp (prob {cfg.train.mosaic_prob}, {cfg.train.mixup_prob}) at input "
          f"{cfg.model.input_size}, batch {args.batch}, {workers} loader process(es), {len(samples)} generated "
          f"VOC images of 375-500 px; a start-up round, then {args.rounds} rounds x {batches} batches after the first")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    for round_idx in range(args.rounds + 1):
        for name, loader in loaders.items():
            if name != "package":
                loader.batch_sampler.set_epoch(round_idx)
            times[name].append(time_loader(loader, batches))
    per_worker = {}
    for name, ((start_first, start_round_s), *steady) in times.items():
        rate = args.batch / statistics.median(per_batch for _, per_batch in steady)
        per_worker[name] = rate / max(workers, 1)
        print(f"  {name:14s} steady {rate:7.2f} images/s = {per_worker[name]:6.2f} per loader process | start-up "
              f"round: first batch after {start_first:.2f}s, then {args.batch / start_round_s:.2f} images/s | "
              f"later rounds' first batch after {statistics.median(first for first, _ in steady):.2f}s")
    print("  ours = make_loader (persistent workers, resized images cached as .npy); ours_decoding = the same, "
          "decoding every pull")
    print(f"  ratio ours / package per loader process          = {per_worker['ours'] / per_worker['package']:.3f}")
    print(f"  ratio ours_decoding / package per loader process = {per_worker['ours_decoding'] / per_worker['package']:.3f}")


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
        images, targets = images.to(device, non_blocking=True).float(), targets.to(device, non_blocking=True)
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
    parser.add_argument("--input", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round; 0 skips the step timings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--loader-images", type=int, default=64,
                        help="generated VOC images for the loaders (at least batch x (loader-batches + 1))")
    parser.add_argument("--loader-batches", type=int, default=4, help="timed batches per round, after the first")
    parser.add_argument("--trainer-epochs", type=int, default=0, help="0 skips the TorchTrainer run")
    parser.add_argument("--freeze-sweep", action="store_true",
                        help="time our step per train.freeze setting (baseline none) instead of the comparisons")
    parser.add_argument("--weights", default=None, help="start weights for --freeze-sweep (e.g. the pretrained tiny)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n_images = max(4 * args.batch, 32)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    print(f"model yolox_{args.size}, input {args.input}, batch {args.batch}, {args.loader_workers} loader process(es)")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as root:
        cfg = Config(model=ModelConfig(size=args.size, input_size=args.input),
                     train=TrainConfig(epochs=max(args.trainer_epochs, 1), batch_size=args.batch, num_workers=1,
                                       use_gpu=device.type == "cuda", cpus_per_worker=float(os.cpu_count() or 1),
                                       warmup_epochs=0, no_aug_epochs=0, eval_interval=1,
                                       num_loader_workers=args.loader_workers, max_failures=0))
        labels, manifest = make_images(root, n_images)
        samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(os.path.join(root, "cache")))
        if args.freeze_sweep:
            freeze_sweep(samples, cfg, args, device)
            return
        compare_loaders(os.path.join(root, "voc"), cfg, args)
        yolox_rate = compare_steps(samples, cfg, args, device) if args.steps > 0 else None
        if args.trainer_epochs > 0:
            run_trainer(cfg, labels, manifest, root, device, len(samples), yolox_rate)


def compare_steps(samples: list[train_data.Sample], cfg: Config, args: argparse.Namespace, device: torch.device) -> float:
    """Prints yolox_step, our_step and our_step_data; returns yolox_step's images/s."""
    dataset = train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size)
    n_steps = args.steps + 1
    fixed = list(train_data.make_loader(dataset, args.batch, n_steps, seed=0))  # same batches for both steps
    print(f"steps: {len(samples)} generated 320x240 images, median of {args.rounds} rounds x {args.steps} steps")

    ours_model = build_model(args.size, len(CLASSES)).to(device)
    yolox_model = build_model(args.size, len(CLASSES)).to(device)
    yolox_model.load_state_dict(ours_model.state_dict())
    state = train_engine.make_state(ours_model, cfg.train, args.batch, n_steps, device)
    state.step = 1  # past the first step's special-cased lr, as in the middle of training
    def ours(images: torch.Tensor, targets: torch.Tensor) -> None:
        train_engine.train_step(state, images, targets)

    yolox = yolox_step_fn(yolox_model, device, args.batch, n_steps)
    for step in (yolox, ours):  # warm-up (allocator, cudnn autotune, first-call overheads)
        step(*fixed[0])

    # Our data path as train_loop_per_worker builds it: resized images kept next to the copied ones.
    cached = train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size, resized_dir=os.path.join(os.path.dirname(samples[0].path), "resized"))
    loader = train_data.make_loader(cached, args.batch, args.steps, seed=1, num_workers=args.loader_workers,
                               pin_memory=device.type == "cuda")
    start_up = time_epoch(ours, loader, 0, device)  # worker processes start here, and persist
    times: dict[str, list[float]] = {"yolox_step": [], "our_step": [], "our_step_data": []}
    for round_idx in range(args.rounds):
        times["yolox_step"].append(time_steps(yolox, fixed[1:], device))
        times["our_step"].append(time_steps(ours, fixed[1:], device))
        times["our_step_data"].append(time_epoch(ours, loader, round_idx + 1, device) / args.steps)
    rates = {name: args.batch / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"  {name:15s} {rate:8.2f} images/s")
    print(f"  our_step_data start-up: first epoch ({args.steps} steps, loader processes starting) "
          f"{start_up:.2f}s, later epochs median {statistics.median(times['our_step_data']) * args.steps:.2f}s")
    print(f"  ratio our_step / yolox_step      = {rates['our_step'] / rates['yolox_step']:.3f}")
    print(f"  ratio our_step_data / yolox_step = {rates['our_step_data'] / rates['yolox_step']:.3f}")
    return rates["yolox_step"]


def freeze_sweep(samples: list[train_data.Sample], cfg: Config, args: argparse.Namespace, device: torch.device) -> None:
    """Seconds per step of our_step for each train.freeze setting, from one start, on the same batches;
    the settings alternate within each round. Prints images/s and the step time relative to `none`."""
    dataset = train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size)
    fixed = list(train_data.make_loader(dataset, args.batch, args.steps + 1, seed=0))
    start = build_model(args.size, len(CLASSES))
    if args.weights:
        load_weights(start, args.weights)  # a checkpoint with another class count: the class head stays fresh
    steps = {}
    for freeze in FREEZE_CHOICES:
        model = build_model(args.size, len(CLASSES))
        model.load_state_dict(start.state_dict())
        frozen = freeze_model(model, freeze)
        state = train_engine.make_state(model.to(device), cfg.train, args.batch, args.steps + 1, device)
        state.step = 1  # past the first step's special-cased lr, as in the middle of training
        steps[freeze] = functools.partial(train_engine.train_step, state)
        steps[freeze](*fixed[0])  # warm-up (allocator, first-call overheads)
        total = sum(p.numel() for p in model.parameters())
        print(f"  {freeze:14s} {frozen / 1e6:5.2f}M of {total / 1e6:5.2f}M parameters frozen")
    times: dict[str, list[float]] = {freeze: [] for freeze in steps}
    for _ in range(args.rounds):
        for freeze, step in steps.items():
            times[freeze].append(time_steps(step, fixed[1:], device))
    print(f"freeze sweep: yolox_{args.size} at {cfg.model.input_size}, batch {args.batch}, start "
          f"{args.weights or 'fresh initialisation'}; median of {args.rounds} rounds x {args.steps} steps")
    baseline = statistics.median(times["none"])
    for freeze, values in times.items():
        seconds = statistics.median(values)
        print(f"  {freeze:14s} {args.batch / seconds:8.2f} images/s  {1000 * seconds:8.1f} ms/step  "
              f"ratio step time / none = {seconds / baseline:.3f}")


def time_epoch(step, loader: torch.utils.data.DataLoader, epoch: int, device: torch.device) -> float:
    """Seconds for one epoch of `loader` through `step`."""
    loader.batch_sampler.set_epoch(epoch)
    sync(device)
    started = time.perf_counter()
    for images, targets in loader:
        step(images, targets)
    sync(device)
    return time.perf_counter() - started


def run_trainer(cfg: Config, labels: str, manifest: str, root: str, device: torch.device, n_train: int,
                yolox_rate: float | None) -> None:
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             num_cpus=os.cpu_count(), num_gpus=1 if device.type == "cuda" else 0)
    started = time.perf_counter()
    result = train.train_model(training(cfg), labels, manifest, os.path.join(root, "out"), CLASSES)
    wall = time.perf_counter() - started
    ray.shutdown()
    batch = cfg.train.batch_size
    trained = result.epochs * -(-n_train // batch) * batch
    in_epochs = sum(h["train_seconds"] + h["eval_seconds"] for h in result.history)
    print(f"trainer (1 worker, {result.epochs} epochs, validation every epoch): {trained / wall:.2f} images/s wall "
          f"({trained} images in {wall:.1f}s); start-up and checkpoints (wall outside epochs) {wall - in_epochs:.1f}s")
    steady = [h["train_images_per_s"] for h in result.history if h["epoch"] > 1]
    first = result.history[0]["train_images_per_s"]
    print(f"  first epoch {first:.2f} images/s (loader processes starting)")
    if steady:
        rate = statistics.median(steady)
        print(f"  steady      {rate:.2f} images/s (epochs after the first, training time only)")
        if yolox_rate:
            print(f"  ratio trainer steady / yolox_step = {rate / yolox_rate:.3f}")


if __name__ == "__main__":
    main()
