"""Scoring throughput: raylib.score.score_pool against a strong bare PyTorch loop, with the model alone
as the upper bound. Every ratio is measured in the same run.

    python benchmarks/score_throughput.py                       # CPU: nano, input 256, 3,000 images
    python benchmarks/score_throughput.py --device cuda --size s --input 640 --batch-size 64 --n 40000
    python benchmarks/score_throughput.py --nodes                # CPU: two 1-CPU Ray nodes vs one

Images: `--unique` generated JPEGs of VOC's size (500x375, ~55 KB), listed `--n` times in all in the
manifest under distinct image ids (reads come from the page cache, as on a warm local disk).
Model: YOLOX with its BatchNorm statistics set from generated images (an untrained YOLOX in eval mode
gives every anchor the same score) and its objectness bias chosen so that `--candidates` anchors per
image clear `strategy.min_score` (a trained detector on VOC keeps tens); `--candidates all` makes every
anchor a candidate, the worst case of the post-process.

Paths, images/s:
  model         the model alone on letterboxed, pinned batches (fp16 + channels_last on a GPU): the bound;
  model+post    the model and model.decode_batch (one post-process per batch) on the same batches;
  model+post1   the model and the per-image post-process it replaced (tests/reference_decode.py);
  bare          a DataLoader whose workers read, decode (raylib.images) and letterbox, pinned memory,
                non-blocking copies, the model, decode_batch, the confidence floor: what a good engineer
                writes without Ray;
  ray           score_pool end to end (Ray Data read -> read_images/load_images -> YoloxScorer actors ->
                Parquet -> detections/ + image_status/), after an untimed warm-up run that starts Ray's
                workers; each timed run starts its own actors as every real run does. Its steady state is
                first to last batch in the actors.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pyarrow as pa
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.reference_decode: the per-image post-process, kept as the baseline

from raylib import images, model, schemas, storage  # noqa: E402
from raylib.config import Config, ModelConfig, ScoreConfig, StrategyConfig  # noqa: E402
from raylib.paths import RoundPaths  # noqa: E402
from tests.reference_decode import decode_per_image  # noqa: E402

MIN_SCORE = 0.2
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def _one_image(args: tuple[str, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    a, b, c = rng.uniform(0.2, 0.8, 3)
    base = np.stack([xx * a * 255 / 500, yy * b * 255 / 375, (xx + yy) * c * 255 / 875], -1)
    image = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y, s = int(rng.integers(20, 480)), int(rng.integers(20, 355)), int(rng.integers(12, 90))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), s, color, -1)
        else:
            cv2.rectangle(image, (x - s, y - s // 2), (x + s, y + s // 2), color, -1)
    cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def make_images(folder: str, n: int) -> list[str]:
    """n JPEGs of 500x375: a noisy gradient with 2-6 filled shapes, quality 90 (~55 KB, like VOC)."""
    paths = [os.path.join(folder, f"{i:06d}.jpg") for i in range(n)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_one_image, [(p, i) for i, p in enumerate(paths)], chunksize=16))
    return paths


def write_manifest(paths: list[str], n: int, uri: str) -> str:
    """`n` rows cycling over `paths`, each with its own image id."""
    uris = [paths[i % len(paths)] for i in range(n)]
    table = pa.table({"image_id": [f"img{i:07d}" for i in range(n)], "uri": uris})
    storage.write_table(schemas.check(table, schemas.POOL, "pool"), uri)
    return uri


def letterboxed(paths: list[str], side: int) -> tuple[torch.Tensor, list[float], list[tuple[int, int]]]:
    canvases, ratios, sizes = [], [], []
    for path in paths:
        with open(path, "rb") as handle:
            image = images.decode_image(handle.read(), path)
        canvas, ratio = model.letterbox(image, side)
        canvases.append(canvas)
        ratios.append(ratio)
        sizes.append(image.shape[:2])
    return torch.from_numpy(np.stack(canvases)), ratios, sizes


def calibrated_weights(path: str, size: str, num_classes: int, side: int, paths: list[str],
                       candidates: str) -> tuple[str, float]:
    """Weights whose detections differ per anchor and image, with about `candidates` anchors per
    image over MIN_SCORE ("all": every anchor). Returns (path, measured candidates per image)."""
    torch.manual_seed(0)
    net = model.build_model(size, num_classes)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # running stats = the plain average of the calibration pass
    canvases, _, _ = letterboxed(paths[:8], side)
    inputs = model.to_input(canvases)
    net.train()
    with torch.no_grad():
        for level, x in enumerate(net.backbone(inputs)):
            x = net.head.stems[level](x)
            net.head.cls_convs[level](x)
            net.head.reg_convs[level](x)
    net.eval()
    for conv in net.head.cls_preds:
        torch.nn.init.constant_(conv.bias, 4.0)  # cls_conf ~ 1: objectness alone decides the count
    for conv in net.head.obj_preds:
        torch.nn.init.constant_(conv.bias, 0.0)
    with torch.inference_mode():
        out = net(inputs).double()
    # A bias b adds b to every objectness logit: count the candidates for any b from one forward pass.
    logits, cls_conf = torch.logit(out[..., 4], eps=1e-12), out[..., 5:].max(-1).values

    def per_image(bias: float) -> float:
        return float(((torch.sigmoid(logits + bias) * cls_conf) > MIN_SCORE).sum(1).double().mean())

    if candidates == "all":
        bias = 8.0
    else:  # the count grows with the bias: bisect
        low, high = -40.0, 20.0
        for _ in range(50):
            bias = (low + high) / 2
            low, high = (bias, high) if per_image(bias) < float(candidates) else (low, bias)
    measured = per_image(bias)
    for conv in net.head.obj_preds:
        torch.nn.init.constant_(conv.bias, bias)
    model.save_weights(net, path, size, VOC_CLASSES[:num_classes])
    return path, measured


class LetterboxedImages(torch.utils.data.Dataset):
    """The bare loop's dataset: read + decode + letterbox in DataLoader workers."""

    def __init__(self, paths: list[str], side: int):
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with open(self.paths[index], "rb") as handle:
            image = images.decode_image(handle.read(), self.paths[index])
        canvas, ratio = model.letterbox(image, self.side)
        return torch.from_numpy(canvas), ratio, image.shape[0], image.shape[1]


def prepare(net: torch.nn.Module, device: torch.device, half: bool) -> torch.nn.Module:
    net = net.eval().to(device)
    return net.half().to(memory_format=torch.channels_last) if half else net


def to_device(canvases: torch.Tensor, device: torch.device, half: bool) -> torch.Tensor:
    inputs = model.to_input(canvases.to(device, non_blocking=True))
    return inputs.half().contiguous(memory_format=torch.channels_last) if half else inputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_bare(net, paths: list[str], cfg: Config, device, half: bool, workers: int) -> tuple[float, int]:
    """Seconds (loader start-up included) and detections kept, over `paths`."""
    sc = cfg.score
    loader = torch.utils.data.DataLoader(
        LetterboxedImages(paths, cfg.model.input_size), batch_size=sc.batch_size, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    kept = 0
    sync(device)
    started = time.perf_counter()
    for canvases, ratios, heights, widths in loader:
        outputs = net(to_device(canvases, device, half))
        dets = model.decode_batch(outputs, ratios, torch.stack([heights, widths], 1),
                                  candidate_conf=max(sc.candidate_conf, MIN_SCORE),
                                  nms_threshold=sc.nms_threshold, max_detections=sc.max_detections)
        kept += int((dets.cls_conf * dets.loc_conf > MIN_SCORE).sum())
    sync(device)
    return time.perf_counter() - started, kept


@torch.inference_mode()
def run_model(net, canvases: torch.Tensor, ratios, sizes, cfg: Config, device, half: bool,
              post: str | None) -> float:
    """Seconds for the model (and a post-process: "batch", "image" or None) over pinned canvases."""
    sc = cfg.score
    options = {"candidate_conf": max(sc.candidate_conf, MIN_SCORE), "nms_threshold": sc.nms_threshold,
               "max_detections": sc.max_detections}
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(canvases), sc.batch_size):
        outputs = net(to_device(canvases[start:start + sc.batch_size], device, half))
        part = slice(start, start + sc.batch_size)
        if post == "batch":
            model.decode_batch(outputs, ratios[part], sizes[part], **options)
        elif post == "image":
            decode_per_image(outputs, ratios[part], sizes[part], **options)
    sync(device)
    return time.perf_counter() - started


def timed_scorer(log_path: str) -> type:
    """YoloxScorer that appends wall-clock stamps (actor __init__, each batch and each of its phases:
    inputs = decode + letterbox on the device, detect = model + post-process, table = Arrow rows) to
    `log_path`, so that actor start-up, steady state and where an actor's time goes can be told apart.
    Ray pickles it by value (__main__)."""
    from raylib.score import YoloxScorer

    class TimedScorer(YoloxScorer):
        def __init__(self, *args, **kwargs):
            started = time.time()
            super().__init__(*args, **kwargs)
            self._stamp("init", started)

        def __call__(self, batch):
            started = time.time()
            result = super().__call__(batch)
            self._stamp("batch", started, len(batch["image_id"]))
            return result

        def _inputs(self, *args):
            return self._timed("inputs", super()._inputs, *args)

        def _detect(self, *args, **kwargs):
            return self._timed("detect", super()._detect, *args, **kwargs)

        def _table(self, *args):
            return self._timed("table", super()._table, *args)

        def _timed(self, kind: str, phase, *args, **kwargs):
            started = time.time()
            result = phase(*args, **kwargs)
            self._stamp(kind, started)
            return result

        def _stamp(self, kind: str, started: float, rows: int = 0) -> None:
            try:
                with open(log_path, "a") as handle:
                    handle.write(f"{kind} {os.getpid()} {started:.6f} {time.time():.6f} {rows}\n")
            except FileNotFoundError:  # an actor Ray Data started late, for a run that has ended
                pass

    return TimedScorer


def run_ray(manifest: str, weights: str, root: str, cfg: Config, class_names: list[str]) -> tuple[float, int, dict]:
    """Seconds and detections of score_pool, and its timeline (seconds after the call)."""
    from raylib.score import score_pool
    from raylib.stages import scoring

    os.makedirs(root, exist_ok=True)
    log_path = os.path.join(root, "stamps.txt")
    started = time.time()
    summary = score_pool(manifest, weights, RoundPaths(os.path.join(root, "run"), 0), scoring(cfg), class_names,
                         scorer_cls=timed_scorer(log_path))
    elapsed = time.time() - started
    stamps = [line.split() for line in open(log_path)] if os.path.exists(log_path) else []
    spans = {}
    for kind, _, a, b, _ in stamps:
        spans.setdefault(kind, []).append((float(a) - started, float(b) - started))
    batches = spans.get("batch", [])
    timeline = {"busy": sum(b - a for a, b in batches),
                "init_began": min((a for a, _ in spans.get("init", [])), default=float("nan")),
                "actor_ready": max((b for _, b in spans.get("init", [])), default=float("nan")),
                "first_batch": min((a for a, _ in batches), default=float("nan")),
                "last_batch": max((b for _, b in batches), default=float("nan"))}
    for phase in ("inputs", "detect", "table"):  # mean ms per batch (threads overlap: wall, not CPU)
        timeline[phase] = 1000 * sum(b - a for a, b in spans.get(phase, [])) / max(1, len(batches))
    timeline["call"] = 1000 * timeline["busy"] / max(1, len(batches))
    shutil.rmtree(root, ignore_errors=True)
    return elapsed, summary.n_detections, timeline


def start_ray(gpu: bool, num_cpus: int | None) -> None:
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=1 if gpu else 0,
             object_store_memory=4 * 1024**3, log_to_driver=True)


def nodes_scaling(args, root: str, paths: list[str], weights: str, class_names: list[str]) -> None:
    """The same work on one 1-CPU scoring node, then on two (ray.cluster_utils.Cluster), one actor each.
    The head has one CPU of its own for what is not scoring (the manifest read, the split tasks): on a
    1-CPU cluster an actor holding the only CPU leaves Ray Data's read task nowhere to run."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.data import DataContext

    manifest = write_manifest(paths, args.n, os.path.join(root, "pool.parquet"))
    warm = write_manifest(paths, 32, os.path.join(root, "warm.parquet"))
    rates = {}
    for nodes in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
        # One fused actor per node (decode inside it: equal CPU requests), the CPU preset's shape.
        cfg = Config(model=ModelConfig(size=args.size, input_size=args.input),
                     strategy=StrategyConfig(min_score=MIN_SCORE),
                     score=ScoreConfig(batch_size=args.batch_size or 16, num_actors=nodes, num_cpus_per_actor=1,
                                       decode_num_cpus=1, torch_threads=1))
        run_ray(warm, weights, os.path.join(root, "warm"), cfg, class_names)
        seconds = [run_ray(manifest, weights, os.path.join(root, f"n{nodes}r{r}"), cfg, class_names)[0]
                   for r in range(args.repeats)]
        rates[nodes] = args.n / statistics.median(seconds)
        print(f"{nodes} node(s) x 1 CPU: {rates[nodes]:.1f} images/s (median of {args.repeats}: "
              + ", ".join(f"{s:.1f}s" for s in seconds) + ")", flush=True)
        ray.shutdown()
        cluster.shutdown()
    print(f"ratio two nodes / one node: {rates[2] / rates[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="nano")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--n", type=int, default=3000, help="manifest rows (images scored per run)")
    parser.add_argument("--unique", type=int, default=400, help="distinct generated JPEGs")
    parser.add_argument("--candidates", default="20", help="anchors per image over min_score, or 'all'")
    parser.add_argument("--batch-size", type=int, default=None, help="default: conf/score/<cpu|gpu>.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians reported")
    parser.add_argument("--workers", type=int, default=None, help="bare DataLoader workers (default: cores-1)")
    parser.add_argument("--actors", type=int, default=None, help="score.num_actors (default: the preset's)")
    parser.add_argument("--concurrent", type=int, default=None, help="score.concurrent_batches (default: preset)")
    parser.add_argument("--nms-chunk", type=int, default=None, help="model.NMS_CHUNK_BOXES of the device")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="score.num_gpus_per_actor (default: 1)")
    parser.add_argument("--skip", default="", help="comma list of paths not to run: model,bare,ray")
    parser.add_argument("--nodes", action="store_true", help="only the two-node vs one-node scaling (CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="score.compile=true for ray, and the model paths compiled too (compile time printed)")
    parser.add_argument("--ray-variants", default="",
                        help="after the main runs, score_pool once per BATCHxCONCURRENT, e.g. 128x3,256x2")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.nms_chunk:
        model.NMS_CHUNK_BOXES[device.type] = args.nms_chunk
    class_names = VOC_CLASSES[:args.classes]

    from omegaconf import OmegaConf
    preset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScoreConfig), OmegaConf.load(
        os.path.join(ROOT, "conf", "score", "gpu.yaml" if gpu else "cpu.yaml"))))
    preset.num_actors = args.actors or (1 if gpu else preset.num_actors)  # one GPU here
    preset.concurrent_batches = args.concurrent or preset.concurrent_batches
    preset.batch_size = args.batch_size or preset.batch_size
    preset.compile = args.compile or preset.compile
    if gpu:
        preset.num_cpus_per_actor = 2
        preset.num_gpus_per_actor = args.gpus_per_actor or preset.num_gpus_per_actor
    cfg = Config(model=ModelConfig(size=args.size, input_size=args.input), score=preset,
                 strategy=StrategyConfig(min_score=MIN_SCORE))
    half = gpu and preset.fp16
    cores = os.cpu_count() or 1
    workers = args.workers or max(1, cores - 1)

    print(f"machine: {platform.machine()}, {cores} CPU(s), torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if gpu else "") + f", load average {os.getloadavg()[0]:.2f}")
    root = tempfile.mkdtemp(prefix="score-bench-")
    try:
        started = time.perf_counter()
        os.makedirs(os.path.join(root, "images"))
        paths = make_images(os.path.join(root, "images"), args.unique)
        weights, per_image = calibrated_weights(os.path.join(root, "w.pt"), args.size, args.classes, args.input,
                                                paths, args.candidates)
        print(f"{args.unique} JPEGs (mean {np.mean([os.path.getsize(p) for p in paths]) / 1024:.0f} KB) and "
              f"weights in {time.perf_counter() - started:.1f}s; yolox_{args.size} {args.input}px, {args.classes} "
              f"classes, {per_image:.1f} candidates per image over min_score {MIN_SCORE}")
        if args.nodes:
            nodes_scaling(args, root, paths, weights, class_names)
            return
        print(f"batch {preset.batch_size}" + (", fp16 + channels_last" if half else "") + f"; bare: {workers} "
              f"loader workers; ray: {preset.num_actors} actor(s) x {preset.num_cpus_per_actor} CPU, "
              f"device_decode={preset.device_decode}, concurrent_batches={preset.concurrent_batches}; "
              f"{args.n} images per run", flush=True)

        torch.set_num_threads(cores if gpu else max(1, int(preset.num_cpus_per_actor * preset.num_actors)))
        net = prepare(model.load_model(args.size, args.classes, weights), device, half)
        times: dict[str, list[float]] = {}
        n_of: dict[str, int] = {}
        if "model" not in skip:
            count = min(len(paths), 1024)
            canvases, ratios, sizes = letterboxed(paths[:count], args.input)
            canvases = canvases.pin_memory() if gpu else canvases
            run_model(net, canvases[:preset.batch_size], ratios, sizes, cfg, device, half, "batch")  # warm-up
            for name, post in [("model", None), ("model+post", "batch"), ("model+post1", "image")]:
                times[name] = [run_model(net, canvases, ratios, sizes, cfg, device, half, post)
                               for _ in range(args.repeats)]
                n_of[name] = count
            if args.compile:  # what score.compile runs: batches of batch_size, compiled once
                compiled = torch.compile(net, dynamic=False)
                started = time.perf_counter()
                run_model(compiled, canvases[:preset.batch_size], ratios, sizes, cfg, device, half, None)
                print(f"model compiled in {time.perf_counter() - started:.1f}s", flush=True)
                whole = count - count % preset.batch_size  # full batches only: no second compile
                for name, post in [("model(compiled)", None), ("model+post(compiled)", "batch")]:
                    times[name] = [run_model(compiled, canvases[:whole], ratios, sizes, cfg, device, half, post)
                                   for _ in range(args.repeats)]
                    n_of[name] = whole
            print("model: " + ", ".join(f"{k} {count / statistics.median(v):.0f}" for k, v in times.items())
                  + " images/s", flush=True)

        manifest = write_manifest(paths, args.n, os.path.join(root, "pool.parquet"))
        bare_paths = [paths[i % len(paths)] for i in range(args.n)]
        timelines, detections = [], {}
        if "ray" not in skip:
            start_ray(gpu, None)
            started = time.perf_counter()
            run_ray(write_manifest(paths, 2 * preset.batch_size, os.path.join(root, "warm.parquet")), weights,
                    os.path.join(root, "warm"), cfg, class_names)
            print(f"ray warm-up in {time.perf_counter() - started:.1f}s (not counted)", flush=True)
        for r in range(args.repeats):
            if "bare" not in skip:
                seconds, detections["bare"] = run_bare(net, bare_paths, cfg, device, half, workers)
                times.setdefault("bare", []).append(seconds)
                n_of["bare"] = args.n
            if "ray" not in skip:
                seconds, detections["ray"], timeline = run_ray(manifest, weights, os.path.join(root, f"r{r}"),
                                                               cfg, class_names)
                times.setdefault("ray", []).append(seconds)
                timelines.append(timeline)
                n_of["ray"] = args.n
            print(f"round {r}: " + ", ".join(f"{k} {n_of[k] / times[k][-1]:.0f}" for k in ("bare", "ray")
                                            if k in times) + f" images/s (load {os.getloadavg()[0]:.1f})", flush=True)

        rate = {k: n_of[k] / statistics.median(v) for k, v in times.items()}
        print(f"\n{'path':12s} {'images/s':>9s} {'min..max':>17s}")
        for name, values in times.items():
            print(f"{name:12s} {rate[name]:9.0f} {n_of[name] / max(values):8.0f}..{n_of[name] / min(values):<8.0f}")
        if "model" in rate:
            print(f"post-process: model+post / model {rate['model+post'] / rate['model']:.3f}; "
                  f"model+post1 (per image) / model {rate['model+post1'] / rate['model']:.3f}; "
                  f"batched / per-image {rate['model+post'] / rate['model+post1']:.3f}")
        if detections:
            print("detections kept: " + ", ".join(f"{k} {v}" for k, v in detections.items()))
        if timelines:
            steady = statistics.median(args.n / (t["last_batch"] - t["first_batch"]) for t in timelines)
            print(f"ray timeline (median, s after score_pool was called): actors ready "
                  f"{statistics.median(t['actor_ready'] for t in timelines):.1f}, first batch "
                  f"{statistics.median(t['first_batch'] for t in timelines):.1f}, last batch "
                  f"{statistics.median(t['last_batch'] for t in timelines):.1f}, returned "
                  f"{statistics.median(times['ray']):.1f}; steady state {steady:.0f} images/s")
            print("actor __init__ began {:.1f} s after the call, ended {:.1f} s; per batch (ms, wall, threads "
                  "overlap): call {:.1f} = inputs {:.1f} + detect {:.1f} + table {:.1f} + rest".format(
                      *(statistics.median(t[k] for t in timelines)
                        for k in ("init_began", "actor_ready", "call", "inputs", "detect", "table"))))
            busy = statistics.median(t["busy"] / (t["last_batch"] - t["first_batch"]) for t in timelines)
            print(f"actor calls in flight, on average between first and last batch: {busy:.2f} (of "
                  f"{preset.num_actors * preset.concurrent_batches}: below it, the actors wait for input)")
            for other in ("bare", "model", "model+post", "model(compiled)", "model+post(compiled)"):
                if other in rate:
                    print(f"ratio ray / {other}: end to end {rate['ray'] / rate[other]:.3f}, "
                          f"steady state {steady / rate[other]:.3f}")
        for variant in filter(None, args.ray_variants.split(",")):
            batch, concurrent = (int(v) for v in variant.split("x"))
            shape = dataclasses.replace(preset, batch_size=batch, concurrent_batches=concurrent)
            seconds, _, t = run_ray(manifest, weights, os.path.join(root, f"v{variant}"),
                                    dataclasses.replace(cfg, score=shape), class_names)
            steady = args.n / (t["last_batch"] - t["first_batch"])
            print(f"variant batch {batch} x {concurrent} in flight: end to end {args.n / seconds:.0f} images/s, "
                  f"steady {steady:.0f}" + (f" ({steady / rate['model+post']:.3f}x model+post)" if "model+post" in rate
                                            else "") + f"; actors ready {t['actor_ready']:.1f} s; calls in flight "
                  f"{t['busy'] / (t['last_batch'] - t['first_batch']):.2f}; per batch ms: call {t['call']:.1f}, "
                  f"inputs {t['inputs']:.1f}, detect {t['detect']:.1f}, table {t['table']:.1f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
