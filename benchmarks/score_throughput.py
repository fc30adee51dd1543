"""Scoring throughput: our Ray Data pipeline (raylib.score.score_pool) against a bare PyTorch loop.

    python benchmarks/score_throughput.py                                   # CPU: nano, input 256, 400 images
    python benchmarks/score_throughput.py --device cuda --size s --input 640 --fp16 --n 2000

One process, one run, the same model, weights file and generated images (N JPEGs of VOC size 500x375
with drawn shapes; a YOLOX whose head biases are raised so that the untrained model has detections, as
tests/test_score.py does). Measured, in images/s:

  bare        torch DataLoader (workers read + decode with raylib.images.decode_image + model.letterbox)
              -> model -> model.decode -> cls_conf * loc_conf, detections over min_score kept as arrays;
  ray         raylib.score.score_pool end to end on a manifest of the same images: Ray Data read ->
              load_images -> YoloxScorer actors -> write_parquet -> split into detections/ + image_status/.
              Ray is started (ray.init(address="local")) and warmed up by one score_pool run on a few
              images before any timing, so Ray's own start-up and the first worker imports are not
              counted; each timed run still starts its actor pool (model load) as every real run does;
  model       the model alone on pre-decoded, letterboxed tensors (upper bound of both);
  model+nms   the model and model.decode on pre-decoded tensors.

bare and ray alternate over --repeats rounds and the median is reported, so that a noisy neighbour on a
shared machine hits both. `--profile` also prints the single-core cost of each stage per image.
The ratio printed is ray / bare (1.0 = no overhead).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa
import torch

from raylib import images, model, schemas, storage
from raylib.config import Config, ModelConfig, ScoreConfig, StrategyConfig
from raylib.paths import RoundPaths

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def make_images(root: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n JPEGs of 500x375 (VOC's typical size): a smooth gradient with sensor-like noise and 2-6 filled
    shapes, quality 90 (about 60 KB each, like VOC photos). Returns [(image_id, path)]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    out = []
    for i in range(n):
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
        path = os.path.join(root, f"{i:06d}.jpg")
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((f"{i:06d}", path))
    return out


def write_manifest(items: list[tuple[str, str]], uri: str) -> str:
    table = pa.table({"image_id": [i for i, _ in items], "uri": [p for _, p in items]})
    storage.write_table(schemas.check(table, schemas.POOL, "pool"), uri)
    return uri


def confident_weights(path: str, size: str, num_classes: int, bias: float) -> str:
    """Untrained YOLOX with objectness and class biases set to `bias` (tests/test_score.py)."""
    torch.manual_seed(0)
    net = model.build_model(size, num_classes)
    for conv in list(net.head.obj_preds) + list(net.head.cls_preds):
        torch.nn.init.constant_(conv.bias, bias)
    model.save_weights(net, path, size, VOC_CLASSES[:num_classes])
    return path


class LetterboxedImages(torch.utils.data.Dataset):
    """What a hand-written PyTorch scorer does: read + decode + letterbox in DataLoader workers."""

    def __init__(self, paths: list[str], side: int, max_pixels: int):
        self.paths, self.side, self.max_pixels = paths, side, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with open(self.paths[index], "rb") as handle:
            image = images.decode_image(handle.read(), self.paths[index], self.max_pixels)
        canvas, ratio = model.letterbox(image, self.side)
        return torch.from_numpy(canvas), ratio, image.shape[0], image.shape[1]


def prepare(net: torch.nn.Module, device: torch.device, half: bool, channels_last: bool) -> torch.nn.Module:
    net = net.eval().to(device)
    if half:
        net = net.half()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def to_device(canvases: torch.Tensor, device: torch.device, half: bool, channels_last: bool) -> torch.Tensor:
    inputs = model.to_input(canvases.to(device, non_blocking=True))
    if half:
        inputs = inputs.half()
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_bare(net, paths, cfg: Config, device, half, channels_last, workers: int) -> tuple[float, int]:
    """Seconds and detections kept for the bare loop over `paths` (loader start-up included)."""
    sc = cfg.score
    loader = torch.utils.data.DataLoader(
        LetterboxedImages(paths, cfg.model.input_size, sc.max_pixels), batch_size=sc.batch_size,
        num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    kept = 0
    sync(device)
    started = time.perf_counter()
    for canvases, ratios, heights, widths in loader:
        outputs = net(to_device(canvases, device, half, channels_last))
        decoded = model.decode(outputs, ratios.tolist(), list(zip(heights.tolist(), widths.tolist())),
                               candidate_conf=sc.candidate_conf, nms_threshold=sc.nms_threshold,
                               max_detections=sc.max_detections)
        for dets in decoded:
            score = dets.cls_conf * dets.loc_conf
            kept += int((score > cfg.strategy.min_score).sum())
    sync(device)
    return time.perf_counter() - started, kept


@torch.inference_mode()
def run_model(net, canvases: torch.Tensor, ratios, sizes, cfg: Config, device, half, channels_last,
              with_decode: bool) -> float:
    """Seconds for the model (and optionally decode) over pre-decoded canvases, batch by batch."""
    sc = cfg.score
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(canvases), sc.batch_size):
        outputs = net(to_device(canvases[start:start + sc.batch_size], device, half, channels_last))
        if with_decode:
            model.decode(outputs, ratios[start:start + sc.batch_size], sizes[start:start + sc.batch_size],
                         candidate_conf=sc.candidate_conf, nms_threshold=sc.nms_threshold,
                         max_detections=sc.max_detections)
    sync(device)
    return time.perf_counter() - started


def timed_scorer(log_path: str) -> type:
    """YoloxScorer that appends wall-clock stamps (actor start, model ready, each batch) to `log_path`,
    so the benchmark can tell the actor pool's start-up from its steady state. Ray pickles this class
    by value (it lives in __main__), log path included."""
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

        def _stamp(self, kind: str, started: float, rows: int = 0) -> None:
            with open(log_path, "a") as handle:
                handle.write(f"{kind} {os.getpid()} {started:.6f} {time.time():.6f} {rows}\n")

    return TimedScorer


def run_ray(manifest: str, weights: str, root: str, cfg: Config, class_names: list[str]) -> tuple[float, int, dict]:
    """Seconds and detections of score_pool, and when (seconds after the call) the actors started,
    had their model, and scored their first and last batch."""
    from raylib.score import score_pool

    os.makedirs(root, exist_ok=True)
    log_path = os.path.join(root, "stamps.txt")
    out = RoundPaths(os.path.join(root, "run"), 0)
    started = time.time()
    summary = score_pool(manifest, weights, out, cfg, class_names, scorer_cls=timed_scorer(log_path))
    elapsed = time.time() - started
    stamps = [line.split() for line in open(log_path)] if os.path.exists(log_path) else []
    inits = [(float(a) - started, float(b) - started) for kind, _, a, b, _ in stamps if kind == "init"]
    batches = [(float(a) - started, float(b) - started) for kind, _, a, b, _ in stamps if kind == "batch"]
    timeline = {"actors": len(inits),
                "actor_ready": max((b for _, b in inits), default=float("nan")),
                "first_batch": min((a for a, _ in batches), default=float("nan")),
                "last_batch": max((b for _, b in batches), default=float("nan")),
                "busy": sum(b - a for a, b in batches)}
    shutil.rmtree(root, ignore_errors=True)
    return elapsed, summary.n_detections, timeline


def print_stats_after_write() -> None:
    """Print Ray Data's execution stats (time per operator, actor/task counts) after score_pool's write."""
    import ray.data

    write_parquet = ray.data.Dataset.write_parquet

    def write_and_print(self, *args, **kwargs):
        result = write_parquet(self, *args, **kwargs)
        print(self.stats())
        return result

    ray.data.Dataset.write_parquet = write_and_print


def profile(paths: list[str], net, cfg: Config, device, half, channels_last, class_names, weights) -> None:
    """Per-image cost of each stage on this process (torch threads as set), from a few batches."""
    from raylib.score import YoloxScorer, load_images

    sc, n = cfg.score, min(len(paths), 4 * cfg.score.batch_size)
    batch = {"image_id": np.array([os.path.basename(p) for p in paths[:n]], dtype=object),
             "uri": np.array(paths[:n], dtype=object)}
    times: dict[str, float] = {}
    started = time.perf_counter()
    for p in paths[:n]:
        with open(p, "rb") as handle:
            data = handle.read()
        decoded = images.decode_image(data, p)
    times["read+decode_image (1 core)"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n):
        model.letterbox(decoded, cfg.model.input_size)
    times["letterbox (1 core)"] = time.perf_counter() - started
    started = time.perf_counter()
    loaded = {k: [] for k in ("image_id", "image", "ratio", "height", "width", "error")}
    for start in range(0, n, sc.batch_size):
        part = load_images({k: v[start:start + sc.batch_size] for k, v in batch.items()},
                           cfg.model.input_size, sc.max_pixels)
        for k in loaded:
            loaded[k].append(part[k])
    times["load_images = all of the above (1 core)"] = time.perf_counter() - started
    loaded = {k: np.concatenate(v) for k, v in loaded.items()}
    scorer = YoloxScorer(cfg, weights, len(class_names), 0)  # sets torch threads as the actor does
    scorer(({k: v[:sc.batch_size] for k, v in loaded.items()}))  # warm-up
    threads = torch.get_num_threads()
    canvases = torch.from_numpy(loaded["image"])
    ratios, sizes = loaded["ratio"].tolist(), list(zip(loaded["height"].tolist(), loaded["width"].tolist()))
    times[f"model ({threads} threads)"] = run_model(scorer.model, canvases, ratios, sizes, cfg, device, half,
                                                    channels_last, with_decode=False)
    times[f"model + decode/NMS ({threads} threads)"] = run_model(scorer.model, canvases, ratios, sizes, cfg,
                                                                 device, half, channels_last, with_decode=True)
    started = time.perf_counter()
    for start in range(0, n, sc.batch_size):
        scorer({k: v[start:start + sc.batch_size] for k, v in loaded.items()})
    times[f"YoloxScorer.__call__ = model+NMS+rows ({threads} threads)"] = time.perf_counter() - started
    print(f"\nprofile: cost per image on {n} images (this process, no Ray)")
    for name, seconds in times.items():
        print(f"  {name:55s} {1000 * seconds / n:8.2f} ms/image")


def parse_ray_configs(text: str) -> list[dict]:
    """"ACTORS:CPUS_PER_ACTOR:DECODE_CPUS:TORCH_THREADS,..." -> ScoreConfig overrides (threads 0: the default)."""
    configs = []
    for item in filter(None, text.split(",")):
        actors, cpus, decode_cpus, threads = item.split(":")
        configs.append({"num_actors": int(actors), "num_cpus_per_actor": float(cpus),
                        "decode_num_cpus": float(decode_cpus), "torch_threads": int(threads) or None})
    return configs


def ray_name(score: dict, gpu: bool) -> str:
    """A short name; "fused" when Ray Data runs load_images inside the actor (equal CPU and no GPU)."""
    fused = not gpu and score["decode_num_cpus"] == score["num_cpus_per_actor"]
    return (f"ray_{score['num_actors']}x{score['num_cpus_per_actor']:g}cpu_t{score['torch_threads'] or 'auto'}"
            f"_d{score['decode_num_cpus']:g}" + ("_fused" if fused else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="nano")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--fp16", action="store_true", help="half precision and channels_last (CUDA only)")
    parser.add_argument("--n", type=int, default=400, help="generated images")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--bias", type=float, default=0.5, help="head bias of the untrained model (detections)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds over all paths; median reported")
    parser.add_argument("--warmup", type=int, default=32, help="images of the untimed Ray warm-up run")
    parser.add_argument("--batch-size", type=int, default=None, help="both paths (default: ScoreConfig's)")
    parser.add_argument("--bare", default=None,
                        help="bare configurations, THREADS:LOADER_WORKERS,...; the fastest is the baseline "
                             "(default CPU: CORES:1,1:1; CUDA: CORES:CORES/2,CORES:CORES-1)")
    parser.add_argument("--ray", default=None,
                        help="ray configurations, ACTORS:CPUS_PER_ACTOR:DECODE_CPUS:TORCH_THREADS,... (threads 0: "
                             "ScoreConfig's rule); decode is fused into the actor when DECODE_CPUS == "
                             "CPUS_PER_ACTOR (Ray Data fuses operators with equal resources). Default: "
                             "conf/score/cpu.yaml (CPU) or 1 actor per GPU with 1 CPU for decode tasks (CUDA)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="ray.init num_cpus (default: all)")
    parser.add_argument("--skip", default="", help="comma list of paths not to run: bare,ray,model")
    parser.add_argument("--profile", action="store_true", help="also print the per-stage cost per image")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats of each ray run")
    parser.add_argument("--keep", default=None, help="folder to generate into and keep (default: temp)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    half = channels_last = gpu and args.fp16
    class_names = VOC_CLASSES[:args.classes]
    base = ScoreConfig()
    common = {"fp16": args.fp16, "channels_last": args.fp16, "num_gpus_per_actor": 1.0 if gpu else 0.0}
    if args.batch_size:
        common["batch_size"] = args.batch_size
    if args.ray:
        ray_scores = parse_ray_configs(args.ray)
    elif gpu:
        ray_scores = [{"num_actors": 1, "num_cpus_per_actor": 1.0, "decode_num_cpus": 1.0, "torch_threads": None}]
    else:  # what ./run.sh scores with: conf/score/cpu.yaml over the schema's defaults
        from omegaconf import OmegaConf

        shipped = OmegaConf.merge(OmegaConf.structured(base), OmegaConf.load(
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "score", "cpu.yaml")))
        ray_scores = [{"num_actors": shipped.num_actors, "num_cpus_per_actor": shipped.num_cpus_per_actor,
                       "decode_num_cpus": shipped.decode_num_cpus, "torch_threads": shipped.torch_threads}]
    if "ray" in skip:
        ray_scores = []

    def make_cfg(score: dict) -> Config:
        return Config(model=ModelConfig(size=args.size, input_size=args.input),
                      score=ScoreConfig(**common, **score), strategy=StrategyConfig(min_score=0.2))

    cfg = make_cfg(ray_scores[0] if ray_scores else {})
    cores = os.cpu_count() or 1
    bare_text = args.bare or (f"{cores}:{max(1, cores // 2)},{cores}:{max(1, cores - 1)}" if gpu else f"{cores}:1,1:1")
    bare_configs = list(dict.fromkeys(tuple(int(v) for v in item.split(":")) for item in bare_text.split(",") if item))
    if "bare" in skip:
        bare_configs = []
    model_threads = bare_configs[0][0] if bare_configs else os.cpu_count()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if gpu else "") + f", load average {os.getloadavg()[0]:.2f}")
    print(f"model yolox_{args.size}, input {args.input}, {args.classes} classes, {args.n} generated 500x375 JPEGs, "
          f"batch {cfg.score.batch_size}" + (", fp16 + channels_last" if half else ""))
    for t, w in bare_configs:
        print(f"  bare_t{t}w{w}: torch threads {t}, {w} DataLoader worker(s)")
    for score in ray_scores:
        print(f"  {ray_name(score, gpu)}: num_actors {score['num_actors']}, num_cpus_per_actor "
              f"{score['num_cpus_per_actor']}, decode_num_cpus {score['decode_num_cpus']}, torch_threads "
              f"{score['torch_threads']}, num_gpus_per_actor {common['num_gpus_per_actor']}")

    root = args.keep or tempfile.mkdtemp(prefix="score-bench-")
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    try:
        started = time.perf_counter()
        items = make_images(os.path.join(root, "images"), args.n)
        paths = [p for _, p in items]
        manifest = write_manifest(items, os.path.join(root, "pool.parquet"))
        warm_manifest = write_manifest(items[:args.warmup], os.path.join(root, "warmup.parquet"))
        weights = confident_weights(os.path.join(root, "weights.pt"), args.size, args.classes, args.bias)
        size_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        print(f"generated in {time.perf_counter() - started:.1f}s (mean JPEG {size_kb:.0f} KB)")

        torch.set_num_threads(model_threads)
        net = prepare(model.load_model(args.size, args.classes, weights), device, half, channels_last)

        if ray_scores:
            import ray
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            if args.stats:
                print_stats_after_write()
            ray.init(address="local", include_dashboard=False, num_cpus=args.ray_cpus,
                     num_gpus=1 if gpu else 0, object_store_memory=2 * 1024**3, log_to_driver=True)
            started = time.perf_counter()
            run_ray(warm_manifest, weights, os.path.join(root, "warm"), cfg, class_names)
            print(f"ray warm-up: {args.warmup} images in {time.perf_counter() - started:.1f}s (not counted)")

        bare_names = [f"bare_t{t}w{w}" for t, w in bare_configs]
        ray_names = [ray_name(score, gpu) for score in ray_scores]
        times: dict[str, list[float]] = {name: [] for name in bare_names + ray_names}
        timelines: dict[str, list[dict]] = {name: [] for name in ray_names}
        detections: dict[str, int] = {}
        for r in range(args.repeats):
            for name, (threads, workers) in zip(bare_names, bare_configs):
                torch.set_num_threads(threads)
                seconds, detections[name] = run_bare(net, paths, cfg, device, half, channels_last, workers)
                times[name].append(seconds)
            for name, score in zip(ray_names, ray_scores):
                seconds, detections[name], timeline = run_ray(manifest, weights, os.path.join(root, f"run{r}"),
                                                              make_cfg(score), class_names)
                times[name].append(seconds)
                timelines[name].append(timeline)
            print(f"round {r}: " + ", ".join(f"{k} {args.n / v[-1]:.1f}" for k, v in times.items() if v)
                  + f" img/s (load average {os.getloadavg()[0]:.2f})", flush=True)

        torch.set_num_threads(model_threads)
        if "model" not in skip:
            canvases, ratios, sizes = [], [], []
            for p in paths:
                with open(p, "rb") as handle:
                    image = images.decode_image(handle.read(), p)
                canvas, ratio = model.letterbox(image, args.input)
                canvases.append(canvas)
                ratios.append(ratio)
                sizes.append(image.shape[:2])
            canvases = torch.from_numpy(np.stack(canvases))
            if gpu:
                canvases = canvases.pin_memory()
            run_model(net, canvases[:cfg.score.batch_size], ratios, sizes, cfg, device, half, channels_last, True)
            times[f"model_t{model_threads}"], times[f"model+nms_t{model_threads}"] = [], []
            for _ in range(args.repeats):
                times[f"model_t{model_threads}"].append(
                    run_model(net, canvases, ratios, sizes, cfg, device, half, channels_last, False))
                times[f"model+nms_t{model_threads}"].append(
                    run_model(net, canvases, ratios, sizes, cfg, device, half, channels_last, True))

        rates = {k: args.n / statistics.median(v) for k, v in times.items() if v}
        width = max(len(k) for k in times) + 2
        print(f"\n{'path':{width}s} {'images/s':>9s} {'min..max':>15s}  runs  (end to end: median of {args.repeats})")
        for name, values in times.items():
            lo, hi = args.n / max(values), args.n / min(values)
            print(f"{name:{width}s} {rates[name]:9.1f} {lo:7.1f}..{hi:<7.1f}  {len(values)}")
        if detections:
            print("detections over min_score: " + ", ".join(f"{k} {v}" for k, v in detections.items()))
        best_bare = max(bare_names, key=rates.get) if bare_names else None
        for name in ray_names:
            line = timelines[name]
            steady = statistics.median(args.n / (t["last_batch"] - t["first_batch"]) for t in line)
            print(f"\n{name}: timeline, seconds after score_pool was called (median of {len(line)})")
            for key, what in [("actor_ready", "last actor has loaded its model"),
                              ("first_batch", "first batch reaches YoloxScorer.__call__"),
                              ("last_batch", "last batch scored"),
                              ("busy", "time in YoloxScorer.__call__, summed over actors")]:
                print(f"  {what:50s} {statistics.median(t[key] for t in line):7.2f}")
            print(f"  {'score_pool returned':50s} {statistics.median(times[name]):7.2f}")
            print(f"  steady state (first to last batch)               {steady:7.1f} images/s")
            if best_bare:
                print(f"  ratio {name} / {best_bare} (best bare): end to end {rates[name] / rates[best_bare]:.3f}, "
                      f"steady state {steady / rates[best_bare]:.3f}")
        if args.profile:
            profile(paths, net, cfg, device, half, channels_last, class_names, weights)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
