"""Where a scoring actor's start-up goes: the seconds `score_pool` pays before its first batch.

    python benchmarks/actor_startup.py --device cuda --size s --input 640

Part 1, a fresh Python process timing each step a YoloxScorer takes (imports, CUDA initialisation,
model build + weights, first and second forward at the preset's batch size). Part 2, Ray: an empty
actor asking for the same resources (worker process start), then a YoloxScorer actor built the way
Ray Data builds it (ready = its __init__ returned), after Ray has started.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = r"""
import json, sys, time
marks = [("python start", time.time())]
import torch; marks.append(("import torch", time.time()))
import torchvision.ops; marks.append(("import torchvision.ops", time.time()))
import yolox.models; marks.append(("import yolox.models", time.time()))
import raylib.score; marks.append(("import raylib.score (ray, ray.data, pyarrow)", time.time()))
device = torch.device(sys.argv[1]); size, side, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if device.type == "cuda":
    torch.zeros(1, device=device); torch.cuda.synchronize(); marks.append(("CUDA context", time.time()))
net = raylib.model.load_model(size, 20, None).eval().to(device)
if device.type == "cuda":
    net = net.half().to(memory_format=torch.channels_last)
    torch.cuda.synchronize()
marks.append(("model build + to device", time.time()))
x = torch.full((batch, 3, side, side), 114.0, device=device)
x = x.half().contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
for name in ("first forward", "second forward"):
    with torch.inference_mode():
        net(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    marks.append((name, time.time()))
print(json.dumps(marks))
"""


def fresh_process(args) -> None:
    started = time.time()
    out = subprocess.run([sys.executable, "-c", STEPS, args.device, args.size, str(args.input), str(args.batch)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT + os.pathsep
                                                              + os.environ.get("PYTHONPATH", "")})
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    previous = started
    print("fresh process (seconds):")
    for name, stamp in marks:
        print(f"  {name:48s} {stamp - previous:6.2f}")
        previous = stamp
    print(f"  {'total':48s} {previous - started:6.2f}")


def ray_actors(args) -> None:
    import ray

    from raylib.config import Config, ModelConfig, ScoreConfig
    from raylib.score import YoloxScorer

    gpu = args.device == "cuda"
    ray.init(address="local", include_dashboard=False, num_gpus=1 if gpu else 0, log_to_driver=False)
    resources = {"num_cpus": 2 if gpu else 1, "num_gpus": 1 if gpu else 0}

    @ray.remote
    class Empty:
        def ready(self) -> float:
            return time.time()

    for attempt in range(2):
        started = time.time()
        actor = Empty.options(**resources).remote()
        ray.get(actor.ready.remote())
        print(f"ray: empty actor ready in {time.time() - started:.2f} s (try {attempt})")
        ray.kill(actor)
    cfg = Config(model=ModelConfig(size=args.size, input_size=args.input),
                 score=ScoreConfig(num_gpus_per_actor=1 if gpu else 0, batch_size=args.batch))
    Scorer = ray.remote(YoloxScorer)
    for attempt in range(2):
        started = time.time()
        actor = Scorer.options(**resources).remote(cfg, None, 20, 0)
        ray.get(actor.__ray_ready__.remote())
        print(f"ray: YoloxScorer actor ready in {time.time() - started:.2f} s (try {attempt})")
        ray.kill(actor)
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="nano")
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    fresh_process(args)
    fresh_process(args)  # second time: file caches warm, as for the actors of a later round
    ray_actors(args)


if __name__ == "__main__":
    main()
