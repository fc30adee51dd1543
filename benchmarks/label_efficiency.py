"""Label efficiency: mAP50 vs labelled images, cls_iou against random (paired by seed), with error bars.

    python benchmarks/label_efficiency.py            # stable reduced CPU preset: cls_iou, random, 5 seeds
    python benchmarks/label_efficiency.py --preset v1   # the 2026-11-25 preset (4 rounds, val-picked checkpoints)
    python benchmarks/label_efficiency.py --full     # one GPU: YOLOX-S, input 640, larger pool, 3 seeds
    python benchmarks/label_efficiency.py --strategies cls_iou,random,entropy --seeds 0,1   # a subset
    python benchmarks/label_efficiency.py model.iou_aware_obj=true --out outputs/le_iou   # an option, all runs
    python benchmarks/label_efficiency.py --pool shapes --strategies random,cls_iou,cls_iou_diverse,kcenter \
        --seeds 0,1,2,3,4,5,6,7,8,9      # the second pool (issue 26): a task YOLOX-nano learns from scratch on CPU
    scripts/get_pretrained.sh && python benchmarks/label_efficiency.py --pool trap   # issue 34: where AL should pay
    python benchmarks/label_efficiency.py --pool trap --full    # the same pool at 416 px on one GPU (one seed)

Why the stable preset (issue 13). In v1 (2 seeds) and its rerun with seeds 2-6, a round's mAP50 fell when
30 labels were added (random seed 3: 0.144 -> 0.075; cls_iou seed 6: 0.123 -> 0.093) and the per-seed ratio
cls_iou / random ranged 0.57-2.28. v1 kept the checkpoint with the best *val* mAP50 among epochs 5, 10, 15,
and the val split is 15% of the labels: 9 images at 60 labels, 18 at 120 (~15-35 objects over 10 classes,
most classes with 0-3 objects). An AP50 on 1-3 objects moves by 0.3-1.0 with one detection, so that pick
is a draw between an epoch-5 model (mosaic on, lr near its peak) and the final one, redrawn every round;
a drop of half the mAP50 is what picking the epoch-5 model looks like. The fix: one evaluation at the last
epoch (`train.eval_interval=train.epochs`), so the weights kept are always the final EMA weights after the
no-augmentation epochs, whatever val says. Second, the test set: 200 images (~38 objects per class) gave a
per-class AP50 standard error of roughly 0.05-0.08, so the fixed performance test set is doubled to 400
images (a few seconds per round). Left as in v1 (no evidence against them): 15 epochs and lr 0.02 at batch 8
(`basic_lr_per_img` 0.0025), the lr at which the seed set still learns in 15 epochs. Round 0 (seed set,
train, evaluate) depends on the seed only, so other strategies of a seed reuse it (`share_round0`; not the
score stage: its detection rows carry the strategy's score, so `random` draws its own).

Budget of the default run (2 shared cores, ~55 min): 5 seeds x {cls_iou, random} x 3 rounds (60, 90, 120
labels; v1 had 4), pretraining cut to 500 digit images x 24 epochs (v1: 800 x 30), then one take-all
reference (one round on all 800 pool images, seed 0) for "labels to reach 90% / 95% / 97% of take-all". entropy,
`model.iou_aware_obj=true` and `train.init=previous` are options of the same command, not in the default run.

Reported: mAP50 mean and 95% t interval over seeds per round; then raylib/savings.py's statistics, the same
as every sweep's comparison.md: per labelled count the difference to `random` paired by seed (same seed set
and split) with its 95% interval, the seeds ahead and the differences' std (curves interpolated linearly onto
common counts where runs label different numbers); the area under the mAP50-vs-labels curve relative to
random (paired by seed); labels to reach 90% / 95% / 97% of the take-all mAP50; seeds to resolve a difference;
a verdict per strategy with the number of comparisons made.

The pool is `benchmarks/fashion_pool.py`: Fashion-MNIST products pasted onto real photos, 10 confusable
classes with geometric imbalance (rho**c), empty images, a balanced test set. Every (strategy, seed) is
one run of the user's entry point, `jobs/loop.py`, in its own process with the same overrides (k, rounds,
seed set size, per-round budget), so at each round every strategy has the same number of labelled images.
Each run writes `<out>/runs/<strategy>_seed<seed>/`; the loop itself writes
`<out>/runs/comparison/comparison.{md,png}` (raylib.report.compare_runs).

Transfer learning (seed 6.3): YOLOX does not learn this task from scratch in a CPU budget (measured:
mAP50 0.000 after 30 epochs on 100 images). So every run starts from one set of weights pretrained on a
disjoint source task, `fashion_pool.build_digits` (scikit-learn's bundled handwritten digits pasted the
same way, no fashion label), with the class head dropped, as the seed starts from weights of another
dataset. The pretrained weights are built once by `jobs/loop.py` (one round, every image labelled) and
cached under `<out>/pretrain/`. `--init none` trains from scratch; `--init PATH` uses your weights.

Runs resume: rerunning the same command skips finished runs and committed stages. Each finished run's curve
is also appended to a ledger committed beside the results (`<results>_runs.jsonl`), so a fresh checkout,
which has no `outputs/`, resumes where the last one stopped instead of rerunning hours of seeds. The tables are printed
and written (after every seed: a run cut short leaves its partial result) with the machine description to
benchmarks/results/label_efficiency.md, with the loop's comparison PNG and our own plot beside it.

The trap preset (`--pool trap`, issue 34): the regime in which published detection active learning gains are
measured (a pretrained detector fine-tuned; CALD, PPAL), on a pool built like a camera trap's
(`benchmarks/trap_pool.py`: 2,000 images, six classes in a 27x long tail, 82% of the images in bursts of 5-20
near-identical frames, real photo backgrounds; a fixed 500-image test set, one frame per scene, classes
uniform). Start: YOLOX-tiny trained on camera-trap images (`scripts/get_pretrained.sh`), class head
re-initialised. Budgets: 40 seed images, then 60, 100, 200 (40 / 100 / 200 / 400 labelled: 2 / 5 / 10 / 20% of
the pool), exactly that many for every strategy (`strategy.budget` fills and trims), the loop run once per round
with that round's budget. What was picked to fit one strategy x seed in about 10-15 min on 2 idle cores, and
why (measured 2026-12-08 on cpu-2 under load 10-50 from other jobs; seed 0, 40 seed labels, 15 epochs):
- `train.freeze=none`: round-0 test mAP50 0.284, against 0.200 with `backbone` and 0.146 with `backbone_neck`
  frozen (same seed, same 28 training images, 15 epochs): the camera-trap features need adapting to these
  objects. A step with the backbone frozen costs 0.77x one of `none` (backbone_neck 0.55x; best of 4
  interleaved pairs of steps, batch 8 at 256 px, one process, load 45), and training is under half of a run
  (scoring and evaluation are forward only): not worth 30% less mAP50;
- input 256 px (objects are 25-55% of the frame's height: 48-140 px at 256); scoring the ~1,900 unlabelled
  images a round is the other large cost (tiny at 256: ~2.5x nano's FLOPs);
- 12 epochs (the last 3 without mosaic), lr 0.01 at batch 8 (`basic_lr_per_img` 0.00125, half the
  from-scratch presets': fine-tuning), one evaluation at the last epoch (the stable preset's reason);
- `strategy.k` 10 (the first round's budget over 6 classes): the seed's per-class bottom-k, later rounds filled
  round-robin over the classes' next lowest-scoring images.
`--full` is the same pool at 416 px on one GPU, every parameter trained, 30 epochs, one seed per call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fashion_pool  # noqa: E402  (beside this script, after the path insert)
import trap_pool  # noqa: E402

from raylib import report, savings  # noqa: E402
from raylib.savings import interval95  # noqa: E402


@dataclass
class Setup:
    """Everything a label-efficiency run depends on; the two presets are REDUCED (CPU) and FULL (GPU)."""

    name: str
    n_pool: int
    n_test: int
    rho: float
    seeds: list[int]
    strategies: list[str]
    loop: dict  # Hydra overrides shared by every run (model, train, loop, strategy budgets)
    pretrain_images: int
    pretrain: dict  # overrides of the pretraining run on the digits
    pretrain_more: tuple = ()  # further stages (images, overrides), each from the previous stage's weights
    pool: str = "fashion"  # fashion (benchmarks/fashion_pool.py), shapes (data=synthetic) or trap (trap_pool.py)
    # Labels added by each round after the seed set (strategy.budget per round). Empty: `loop` holds one
    # budget for every round. Set: the loop runs once per round, each time one round longer with that
    # round's budget (`accept_new_values=true`: strategy.budget and loop.rounds may change between rounds).
    budgets: tuple = ()


REDUCED_V1 = Setup(  # the preset of 2026-11-25 (results in RESULTS.md); `--preset v1`
    name="reduced v1 (CPU)",
    n_pool=800, n_test=200, rho=0.7, seeds=[0, 1], strategies=["cls_iou", "random", "entropy"],
    loop={
        "model": "yolox_nano", "model.input_size": 160,
        "train.epochs": 15, "train.batch_size": 8, "train.basic_lr_per_img": 0.0025, "train.mixup_prob": 0.0,
        "train.warmup_epochs": 1, "train.no_aug_epochs": 3, "train.eval_interval": 5,
        "loop.rounds": 4, "loop.seed_size": 60, "loop.last_round_takes_all": False,
        "strategy.k": 10, "strategy.min_score": 0.05, "strategy.budget": 30,
    },
    pretrain_images=800,
    pretrain={"model": "yolox_nano", "model.input_size": 160, "train.epochs": 30, "train.batch_size": 16,
              "train.basic_lr_per_img": 0.0025, "train.mixup_prob": 0.0, "train.warmup_epochs": 2,
              "train.no_aug_epochs": 3, "train.eval_interval": 10},
)

# Every key a run depends on is given, so changes of the config defaults don't change the benchmark.
_CPU = {"train": "cpu", "score": "cpu", "model": "yolox_nano", "model.input_size": 160,
        "train.num_workers": 1, "train.use_gpu": False, "train.batch_size": 8, "train.basic_lr_per_img": 0.0025,
        "train.mosaic_prob": 0.5, "train.mixup_prob": 0.0, "train.warmup_epochs": 1, "loop.split": [0.7, 0.15, 0.15]}

REDUCED = Setup(
    name="stable reduced (CPU)",
    n_pool=800, n_test=400, rho=0.7, seeds=[0, 1, 2, 3, 4], strategies=["cls_iou", "random"],
    loop={
        **_CPU,
        # One evaluation, at the last epoch: the weights kept are the last EMA weights (see the docstring).
        "train.epochs": 15, "train.no_aug_epochs": 3, "train.eval_interval": 15, "train.init": "transfer",
        "model.iou_aware_obj": False,
        "loop.rounds": 3, "loop.seed_size": 60, "loop.last_round_takes_all": False,
        "strategy.k": 10, "strategy.min_score": 0.05, "strategy.budget": 30,
    },
    pretrain_images=500,
    pretrain={**_CPU, "train.epochs": 24, "train.batch_size": 16, "train.warmup_epochs": 2, "train.no_aug_epochs": 3,
              "train.eval_interval": 24},
    # Stage 1 alone reached digits test mAP50 0.033 (v1's 800 x 30 epochs: 0.339); stage 2 brings the
    # image-steps to 21,600 (v1: 24,000).
    pretrain_more=((800, {**_CPU, "train.epochs": 12, "train.batch_size": 16, "train.warmup_epochs": 1,
                          "train.no_aug_epochs": 3, "train.eval_interval": 12}),),
)

# The second pool (issue 26): the embedded demo's task (synthetic shapes, 4 classes, imbalance 0.5, empty and
# duplicate images), which YOLOX-nano learns from scratch on CPU (the demo: mAP50 0.46 on 168 train images).
# The demo's recipe, with one evaluation at the last epoch as in REDUCED; a test set of 120 images.
SHAPES = Setup(
    name="shapes (CPU, from scratch)",
    n_pool=240, n_test=120, rho=0.5, seeds=[0, 1, 2, 3, 4], strategies=["cls_iou", "random"],
    loop={
        **_CPU,
        "train.epochs": 60, "train.no_aug_epochs": 5, "train.eval_interval": 60, "train.init": "transfer",
        "model.iou_aware_obj": False,
        "loop.rounds": 3, "loop.seed_size": 60, "loop.last_round_takes_all": False,
        "strategy.k": 10, "strategy.min_score": 0.05, "strategy.budget": 30,
    },
    pretrain_images=0, pretrain={}, pool="shapes",
)

# The regime where active learning should pay (issue 34): a pretrained detector fine-tuned, a long-tail pool
# with near-duplicate bursts (benchmarks/trap_pool.py), budgets of 2, 5, 10 and 20% of the pool, equal labels
# per strategy (strategy.budget fills and trims). Start: YOLOX-tiny's camera-trap weights
# (scripts/get_pretrained.sh), class head re-initialised by the loader.
PRETRAINED = os.path.join(REPO, "weights", "yolox_tiny_camera_traps.pth")
_TRAP = {"train": "cpu", "score": "cpu", "model": "yolox_tiny", "model.input_size": 256,
         "train.num_workers": 1, "train.use_gpu": False, "train.batch_size": 8, "train.basic_lr_per_img": 0.00125,
         "train.mosaic_prob": 0.5, "train.mixup_prob": 0.0, "train.warmup_epochs": 1, "loop.split": [0.7, 0.15, 0.15],
         "train.epochs": 12, "train.no_aug_epochs": 3, "train.eval_interval": 12, "train.init": "transfer",
         "train.freeze": "none", "model.iou_aware_obj": False,
         "loop.rounds": 2, "loop.seed_size": 40, "loop.last_round_takes_all": False,
         # k = the first round's budget over the 6 classes: the seed's per-class bottom-k; a later round's larger
         # budget is filled round-robin over the classes' next lowest-scoring images (raylib/select.py).
         "strategy.k": 10, "strategy.min_score": 0.05, "strategy.budget": 60}
TRAP = Setup(
    name="trap: pretrained YOLOX-tiny, long tail and bursts (CPU)",
    n_pool=2000, n_test=500, rho=0.55, seeds=list(range(10)),
    strategies=["random", "cls_iou", "cls_iou_diverse", "entropy"],
    loop=_TRAP, pretrain_images=0, pretrain={}, pool="trap",
    budgets=(60, 100, 200),  # 40 -> 100 -> 200 -> 400 labelled: 2, 5, 10, 20% of the pool
)
# The same pool on one GPU at 416 px, sized to one 10-minute call (one seed's four strategies, round 0 shared);
# `--seeds` adds seeds in later calls (the ledger resumes).
TRAP_FULL = Setup(
    name="trap full: pretrained YOLOX-tiny at 416 px (one GPU)",
    n_pool=2000, n_test=500, rho=0.55, seeds=[0],
    strategies=["random", "cls_iou", "cls_iou_diverse", "entropy"],
    loop={**_TRAP, "train": "gpu", "score": "gpu", "model.input_size": 416, "train.use_gpu": True,
          "train.cpus_per_worker": 8, "train.batch_size": 16, "train.epochs": 30, "train.no_aug_epochs": 5,
          "train.eval_interval": 30, "train.freeze": "none", "score.num_actors": 1, "score.num_cpus_per_actor": 4},
    pretrain_images=0, pretrain={}, pool="trap", budgets=(60, 100, 200),
)

FULL = Setup(
    name="full (one GPU)",
    n_pool=6000, n_test=1000, rho=0.7, seeds=[0, 1, 2], strategies=["cls_iou", "random", "entropy"],
    loop={
        "model": "yolox_s", "model.input_size": 640, "train": "gpu", "score": "gpu",
        "train.num_workers": 1, "train.cpus_per_worker": 8, "train.epochs": 60, "train.batch_size": 32,
        "train.no_aug_epochs": 10, "train.warmup_epochs": 3, "train.eval_interval": 10,
        "score.num_actors": 1, "score.num_cpus_per_actor": 4,
        "loop.rounds": 6, "loop.seed_size": 300, "loop.last_round_takes_all": False,
        "strategy.k": 60, "strategy.min_score": 0.2, "strategy.budget": 300,
    },
    pretrain_images=4000,
    pretrain={"model": "yolox_s", "model.input_size": 640, "train": "gpu", "train.num_workers": 1,
              "train.cpus_per_worker": 8, "train.epochs": 80, "train.batch_size": 32, "train.eval_interval": 10},
)


# ------------------------------------------------------------------------------------------- runs


def _overrides(values: dict) -> list[str]:
    def fmt(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return "[" + ",".join(str(v) for v in value) + "]"
        return str(value)

    return [f"{key}={fmt(value)}" for key, value in values.items()]


def _data_overrides(root: str, classes: list[str]) -> list[str]:
    return ["data=voc", f"data.root={root}", f"data.classes=[{','.join(classes)}]",
            "data.pool_sets=[trainval]", "data.test_sets=[test]"]


def pool_overrides(setup: Setup, out: str) -> list[str]:
    """The data overrides of every run on the setup's pool."""
    if setup.pool == "shapes":  # generated by the first run (raylib.synthetic), shared by the others
        return ["data=synthetic", f"data.root={os.path.join(out, 'data', 'shapes')}",
                f"data.synthetic.num_pool={setup.n_pool}", f"data.synthetic.num_test={setup.n_test}",
                f"data.synthetic.imbalance_rho={setup.rho}"]
    if setup.pool == "trap":
        return _data_overrides(os.path.join(out, "data", "trap"), trap_pool.CLASSES)
    return _data_overrides(os.path.join(out, "data", "fashion"), fashion_pool.CLASSES)


ATTEMPTS = 3  # a loop that failed is run again (it resumes at its last committed stage)


def run_job(overrides: list[str], log_path: str) -> float:
    """`jobs/loop.py <overrides>` in its own process (output to `log_path`); returns its wall seconds.

    A failed run is run again, up to ATTEMPTS in all: on a loaded 2-core box a local Ray's start can time
    out ("The current node timed out during startup"), and one such start stopped a 10-seed benchmark."""
    command = [sys.executable, os.path.join(REPO, "jobs", "loop.py"), *overrides]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    for attempt in range(1, ATTEMPTS + 1):
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            result = subprocess.run(command, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode == 0:
            return time.time() - start
        print(f"  attempt {attempt} of {ATTEMPTS} failed (exit {result.returncode}); see {log_path}", flush=True)
    raise RuntimeError(f"`{' '.join(command)}` failed {ATTEMPTS} times; see {log_path}")


def run_rounds(setup: Setup, fixed: list[str], log_path: str) -> float:
    """One (strategy, seed) run: `jobs/loop.py` with the setup's overrides and `fixed` (data, strategy, seed,
    run root, weights); returns its wall seconds. With per-round budgets (`Setup.budgets`) the loop runs once
    per round, each time one round longer with that round's budget: the earlier rounds are committed, so each
    call adds one round."""
    if not setup.budgets:
        return run_job(_overrides(setup.loop) + fixed, log_path)
    seconds = 0.0
    for r, budget in enumerate(setup.budgets):
        loop = {**setup.loop, "loop.rounds": r + 2, "strategy.budget": budget}
        seconds += run_job(_overrides(loop) + fixed + ["accept_new_values=true"], log_path)
    return seconds


def _strip_class_head(src: str, dst: str) -> None:
    """The pretrained weights without the class head, so that every run starts it fresh (seed 6.3)."""
    import torch

    payload = torch.load(src, map_location="cpu", weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("head.cls_preds.")}
    payload["class_names"], payload["num_classes"] = [], 0
    torch.save(payload, dst)


def _stage_suffix(i: int) -> str:
    """The pretraining stage `i`'s name suffix (its data, run root and log): none for the first."""
    return "" if i == 0 else f"_stage{i + 1}"


def pretrain_cached(setup: Setup, out: str) -> bool:
    """Every pretraining stage has finished under `out` (`pretrain` then runs nothing)."""
    return all(os.path.exists(os.path.join(out, "pretrain", f"digits{_stage_suffix(i)}", "benchmark_seconds.json"))
               for i in range(1 + len(setup.pretrain_more)))


def pretrain(setup: Setup, out: str) -> tuple[str, dict]:
    """Weights pretrained on the digits source task (cached); returns (path, facts for the report).

    Stages run in turn, each from the previous stage's weights (`Setup.pretrain_more`); each is cached."""
    stages = [(setup.pretrain_images, setup.pretrain)] + list(setup.pretrain_more)
    init = os.path.join(out, "pretrain", "init_no_class_head.pt")
    weights, seconds, images = None, 0.0, []
    for i, (n_images, overrides) in enumerate(stages):
        suffix = _stage_suffix(i)
        root = os.path.join(out, "data", f"digits{suffix}")
        summary = fashion_pool.build_digits(root, n_pool=n_images, n_test=max(100, n_images // 8))
        run_root = os.path.join(out, "pretrain", f"digits{suffix}")
        timing = os.path.join(run_root, "benchmark_seconds.json")
        if not os.path.exists(timing):
            print(f"pretraining stage {i + 1} on {summary['pool_images']} digit images -> {run_root}", flush=True)
            stage_seconds = run_job(_data_overrides(root, fashion_pool.DIGIT_CLASSES) + _overrides(overrides) + [
                f"run_root={run_root}", "loop.rounds=1", f"loop.seed_size={n_images}"]
                + ([f"model.weights={weights}"] if weights else []), os.path.join(out, "logs", f"pretrain{suffix}.log"))
            with open(timing, "w") as f:
                json.dump({"seconds": stage_seconds}, f)
        with open(timing) as f:
            seconds += json.load(f)["seconds"]
        # A copy without "=" in its path: Hydra's override grammar reads "round=00" as another override.
        weights = os.path.join(out, "pretrain", f"stage{i + 1}.pt")
        shutil.copyfile(os.path.join(run_root, "round=00", "train", "model.pt"), weights)
        images.append(summary["pool_images"])
        with open(os.path.join(run_root, "round=00", "metrics.json")) as f:
            digits_map50 = json.load(f)["map50"]
        print(f"pretraining stage {i + 1}: digits test mAP50 {digits_map50:.3f}", flush=True)
    if not os.path.exists(init):
        _strip_class_head(weights, init)
    return init, {"images": " then ".join(str(n) for n in images), "digits_test_map50": digits_map50,
                  "seconds": seconds}


@dataclass
class Curve:
    strategy: str
    seed: int
    labelled: list[int]
    map50: list[float]
    ap50: list[list[float | None]]
    objects_per_class: list[list[int]] | None  # None: a ledger line that kept mAP50 only (see migrated_from)
    seconds: float
    ap50_kept: bool = True
    start: str = ""  # which start weights (a rebuilt pretraining is not bit-identical: threads, load)


# ------------------------------------------------------------------------------------------ ledger
# One JSON line per finished run, committed beside the results markdown: outputs/ is not in git, so without
# it a fresh checkout would rerun every finished seed. A line is written once its run finished; the first
# line for a (strategy, seed) wins.


def ledger_path(results: str) -> str:
    return os.path.splitext(results)[0] + "_runs.jsonl"


def load_ledger(path: str) -> dict[tuple[str, int], Curve]:
    curves: dict[tuple[str, int], Curve] = {}
    if not os.path.exists(path):
        return curves
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                curve = Curve(row["strategy"], row["seed"], row["labelled"], row["map50"], row["ap50"],
                              row["objects_per_class"], row["seconds"], row["ap50"] is not None, row.get("start", ""))
                curves.setdefault((curve.strategy, curve.seed), curve)
    return curves


def record(path: str, curve: Curve, overrides: list[str] | None = None) -> None:
    row = {"strategy": curve.strategy, "seed": curve.seed, "labelled": [int(n) for n in curve.labelled],
           "map50": [float(m) for m in curve.map50], "ap50": curve.ap50, "objects_per_class": curve.objects_per_class,
           "seconds": round(curve.seconds, 1), "start": curve.start, "overrides": overrides}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# Identical for every strategy of a seed. Not "score": its rows carry the strategy's per-detection score
# (random draws, entropy...); sharing it made every strategy select cls_iou's round-0 images (found
# 2026-11-27: random's round-1 mAP50 equalled cls_iou's on every seed).
_ROUND0_SHARED = ("train", "evaluate", "unlabelled")


def share_round0(src_run: str, dst_run: str) -> bool:
    """Copy round 0's strategy-independent stages of one seed's finished run into another strategy's run.

    Round 0 trains on the seed set, which depends on the seed only, with the same config and training
    seed: the v1 results show bit-identical round-0 mAP50 for every strategy. Reusing it saves one
    training per extra strategy; scoring onwards runs in the destination run."""
    from raylib.paths import RoundPaths

    src, dst = RoundPaths(src_run, 0), RoundPaths(dst_run, 0)
    if os.path.exists(dst.root) or not all(os.path.exists(src.marker(s)) for s in _ROUND0_SHARED):
        return False
    skip = {os.path.basename(p) for p in (src.scored, src.detections, src.image_status, src.embeddings, src.selection,
                                          src.thresholds, src.preannotations, src.oracle_errors, src.labels)} | {"_done"}
    os.makedirs(dst.root)
    for name in os.listdir(src.root):
        if name in skip:
            continue
        path = os.path.join(src.root, name)
        (shutil.copytree if os.path.isdir(path) else shutil.copyfile)(path, os.path.join(dst.root, name))
    for stage in _ROUND0_SHARED:
        os.makedirs(os.path.dirname(dst.marker(stage)), exist_ok=True)
        shutil.copyfile(src.marker(stage), dst.marker(stage))
    return True


def run_all(setup: Setup, out: str, init: str | None, ledger: str, start: str = "") -> list[Curve]:
    curves, kept = [], load_ledger(ledger)
    for seed in setup.seeds:
        first_run = None
        for strategy in setup.strategies:
            name = f"{strategy}_seed{seed}"
            run_root = os.path.join(out, "runs", name)
            fixed = (pool_overrides(setup, out) + [f"strategy={strategy}", f"seed={seed}", f"run_root={run_root}"]
                     + ([f"model.weights={init}"] if init else []))
            overrides = _overrides(setup.loop) + fixed + (
                [f"per round: loop.rounds=2,3,... with strategy.budget={','.join(map(str, setup.budgets))}"]
                if setup.budgets else [])
            timing = os.path.join(run_root, "benchmark_seconds.json")
            if (strategy, seed) in kept and not os.path.exists(timing):
                curve = kept[(strategy, seed)]
                print(f"{name}: done before (ledger {os.path.basename(ledger)}); mAP50 "
                      f"{[round(m, 4) for m in curve.map50]}", flush=True)
                curves.append(curve)
                continue
            if os.path.exists(timing):
                with open(timing) as f:
                    seconds = json.load(f)["seconds"]
                print(f"{name}: done before ({seconds:.0f} s)", flush=True)
            else:
                if first_run and share_round0(first_run, run_root):
                    print(f"{name}: round 0 (train, evaluate) shared with {os.path.basename(first_run)}",
                          flush=True)
                print(f"{name}: running ...", flush=True)
                seconds = run_rounds(setup, fixed, os.path.join(out, "logs", f"{name}.log"))
                with open(timing, "w") as f:
                    json.dump({"seconds": seconds, "overrides": overrides, "budgets": list(setup.budgets)}, f, indent=1)
            first_run = first_run or run_root
            history = report.load_history(run_root)
            curve = Curve(strategy, seed, history.labelled, history.map50, history.ap50, history.objects_per_class,
                          seconds, start=start)
            if (strategy, seed) not in kept:
                record(ledger, curve, overrides)
            curves.append(curve)
            print(f"{name}: {seconds:.0f} s; labelled {history.labelled}; mAP50 "
                  f"{[round(m, 4) for m in history.map50]}", flush=True)
    return curves


def take_all(setup: Setup, out: str, init: str | None, ledger: str, seed: int = 0) -> dict | None:
    """The reference: one round trained on every pool image (same split fractions and training), seed 0."""
    run_root = os.path.join(out, "take_all", f"seed{seed}")
    timing = os.path.join(run_root, "benchmark_seconds.json")
    kept = load_ledger(ledger).get(("take_all", seed))
    if kept and not os.path.exists(timing):
        return {"labelled": kept.labelled[0], "map50": kept.map50[0], "seconds": kept.seconds, "seed": seed}
    if not os.path.exists(timing):
        loop = {**setup.loop, "loop.rounds": 1, "loop.seed_size": setup.n_pool}
        overrides = (pool_overrides(setup, out) + _overrides(loop)
                     + ["strategy=random", f"seed={seed}", f"run_root={run_root}"]
                     + ([f"model.weights={init}"] if init else []))
        print(f"take-all reference ({setup.n_pool} images) -> {run_root}", flush=True)
        seconds = run_job(overrides, os.path.join(out, "logs", "take_all.log"))
        with open(timing, "w") as f:
            json.dump({"seconds": seconds, "overrides": overrides}, f, indent=1)
    with open(timing) as f:
        seconds = json.load(f)["seconds"]
    history = report.load_history(run_root)
    if not kept:
        record(ledger, Curve("take_all", seed, history.labelled, history.map50, history.ap50,
                             history.objects_per_class, seconds))
    return {"labelled": history.labelled[0], "map50": history.map50[0], "seconds": seconds, "seed": seed}


# ---------------------------------------------------------------------------------------- results

# The statistics (paired differences, area ratio, labels to reach, verdicts) are raylib/savings.py's, as in
# every sweep's comparison.md; what is here formats them for this benchmark.


def summarise(curves: list[Curve], strategies: list[str]) -> dict:
    """Per strategy and round: labelled (mean), mAP50 mean / 95% interval / std / range over seeds; and
    each strategy against `random` paired by seed on common labelled counts (`savings.compare`)."""
    by = {s: [c for c in curves if c.strategy == s] for s in strategies}
    by = {s: runs for s, runs in by.items() if runs}
    if not curves:
        return {"n_rounds": 0, "stats": {}, "savings": None}
    n_rounds = min(len(c.map50) for c in curves)
    stats = {}
    for strategy, runs in by.items():
        maps = np.array([c.map50[:n_rounds] for c in runs])
        labelled = np.array([c.labelled[:n_rounds] for c in runs], dtype=float)
        ci = [interval95(maps[:, r]) for r in range(n_rounds)]
        stats[strategy] = {"labelled": labelled.mean(0), "mean": maps.mean(0), "half": np.array([h for _, h in ci]),
                           "std": maps.std(0, ddof=1) if len(runs) > 1 else np.full(n_rounds, np.nan),
                           "min": maps.min(0), "max": maps.max(0), "per_seed": maps, "labelled_per_seed": labelled,
                           "seeds": [c.seed for c in runs]}
    return {"n_rounds": n_rounds, "stats": stats, "savings": savings.compare([c for c in curves if c.strategy in by])}


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def _pm(mean: float, half: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def tables(summary: dict, curves: list[Curve], classes: list[str], reference: dict | None = None) -> str:
    n_rounds, stats = summary["n_rounds"], summary["stats"]
    rows = []
    for strategy, s in stats.items():
        for r in range(n_rounds):
            seeds = " / ".join(f"{v:.3f}" for v in s["per_seed"][:, r])
            rows.append([strategy, str(r), f"{s['labelled'][r]:.0f}", _pm(s["mean"][r], s["half"][r]),
                         f"{s['std'][r]:.4f}", f"{s['min'][r]:.3f}-{s['max'][r]:.3f}", seeds])
    text = ("### mAP50 (performance test set) vs labelled images: mean ± 95% interval over seeds\n\n" + _table(
        ["Strategy", "Round", "Labelled images", "mAP50 mean ± 95%", "std (seeds)", "range", "per seed"], rows))
    if summary["savings"] is not None:  # the take-all reference, when it ran, is 100% for labels-to-reach
        pays = savings.compare([c for c in curves if c.strategy in stats], target_map=reference and reference["map50"],
                               target_source=reference and (f"the take-all mAP50: all {reference['labelled']} pool "
                                                            f"images labelled, seed {reference['seed']}") or "")
        text += "\n\n" + savings.markdown(pays, heading="###", with_verdicts=False)
    last = n_rounds - 1
    header = ["Class"] + [f"{s} AP50" for s in stats] + [f"{s} objects labelled" for s in stats]
    rows = []
    for c, name in enumerate(classes):
        aps, objs = [], []
        for strategy in stats:
            runs = [x for x in curves if x.strategy == strategy and x.ap50_kept]
            values = [x.ap50[last][c] for x in runs if x.ap50[last][c] is not None]
            aps.append(f"{np.mean(values):.3f}" if values else "n/a")
            objs.append(f"{np.mean([x.objects_per_class[last][c] for x in runs]):.1f}" if runs else "n/a")
        rows.append([name] + aps + objs)
    partial = sum(not x.ap50_kept for x in curves)
    note = (f"Left out: {partial} of {len(curves)} runs whose ledger line kept mAP50 only (they finished before the "
            "ledger).\n\n" if partial else "")
    text += (f"\n\n### Last round (round {last}): AP50 per class and labelled objects per class (means over seeds)\n\n"
             + note + _table(header, rows))
    return text


def calibration_table(out: str, curves: list[Curve]) -> str:
    """Per strategy and round, over seeds: Spearman of loc_conf and of cls_conf with true IoU on the val
    split (round=NN/calibration.json, written by the loop's evaluate stage), mean loc_conf, mean true IoU."""
    from raylib.paths import RoundPaths

    rows = []
    for strategy in dict.fromkeys(c.strategy for c in curves):
        runs = [c for c in curves if c.strategy == strategy]
        for r in range(min(len(c.map50) for c in runs)):
            found = []
            for c in runs:
                uri = RoundPaths(os.path.join(out, "runs", f"{c.strategy}_seed{c.seed}"), r).calibration_summary
                if os.path.exists(uri):
                    with open(uri) as f:
                        found.append(json.load(f))
            if not found:
                continue

            def cell(key: str) -> str:
                values = [s[key] for s in found if s.get(key) is not None]
                return _pm(*interval95(values), digits=3) if values else "n/a"

            rows.append([strategy, str(r), str(len(found)), f"{np.mean([s['n_detections'] for s in found]):.0f}",
                         cell("spearman_loc_conf_true_iou"), cell("spearman_cls_conf_true_iou"),
                         cell("mean_loc_conf"), cell("mean_true_iou")])
    if not rows:
        return ""
    return ("### Calibration on the labelled val split (mean ± 95% over seeds; detections >= strategy.min_score)\n\n"
            + _table(["Strategy", "Round", "seeds", "detections (mean)", "Spearman loc_conf vs true IoU",
                      "Spearman cls_conf vs true IoU", "mean loc_conf", "mean true IoU"], rows))


def verdict(summary: dict) -> str:
    """One line per strategy against random (raylib.savings.verdict: the area ratio's call, where the paired
    differences clear zero, and how many comparisons the tables make, uncorrected)."""
    return savings.verdicts(summary["savings"]) if summary["savings"] is not None else ""


def plot(summary: dict, png: str, reference: dict | None = None, title: str = "Fashion-on-photos pool") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for strategy, s in summary["stats"].items():
        half = np.nan_to_num(s["half"])
        ax.errorbar(s["labelled"], s["mean"], yerr=half, marker="o", capsize=3,
                    label=f"{strategy} ({len(s['seeds'])} seeds)")
        for row in s["per_seed"]:
            ax.plot(s["labelled"], row, alpha=0.15, color=ax.lines[-1].get_color())
    if reference:
        ax.axhline(reference["map50"], color="grey", ls="--", label=f"take-all ({reference['labelled']} images)")
    ax.set(xlabel="labelled images", ylabel="mAP50 (balanced test set)",
           title=f"{title}: mAP50 vs labelled images (mean ± 95% interval; thin: seeds)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import ray

    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, GPU: {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}")


def _labelled_schedule(setup: Setup) -> str:
    counts = np.cumsum([setup.loop["loop.seed_size"], *setup.budgets])
    return ", ".join(f"{n} ({100 * n / setup.n_pool:.0f}%)" for n in counts)


def pool_description(dataset: dict) -> list[str]:
    """The results file's "Pool" section: what the images are, and objects per class."""
    if dataset.get("pool") == "trap":
        spec = dataset["spec"]
        return [
            (f"`benchmarks/trap_pool.py` (`build(root, n_pool={spec['n_pool']}, n_test={spec['n_test']}, "
             f"seed={spec['seed']})`), built like a camera trap's pool: {dataset['pool_scenes']} scenes, "
             f"{dataset['pool_images_in_bursts']} of {spec['n_pool']} pool images in bursts of {spec['min_burst']}-"
             f"{spec['max_burst']} near-identical frames (objects drift up to {spec['drift']:g} px a frame, camera "
             f"shake {spec['shake']} px, light ±8%, new sensor noise), {dataset['pool_empty_images']} empty; six "
             f"Fashion-MNIST classes with long-tail weights rho**c (rho {spec['rho']}), real product photos tinted "
             f"and pasted onto {len(dataset['backgrounds'])} real photos bundled with scikit-learn and scikit-image; "
             "frames 4:3, 320-416 px wide. Test set: one frame per scene, classes uniform, objects from "
             "Fashion-MNIST t10k (pool: train)."),
            "",
            _table(["Class", "pool objects", "test objects"],
                   [[c, str(dataset["pool_objects_per_class"][c]), str(dataset["test_objects_per_class"][c])]
                    for c in dataset["classes"]]),
        ]
    if dataset.get("pool") == "shapes":
        head = (f"The synthetic shapes of the embedded demo (`raylib/synthetic.py`, data=synthetic): {dataset['pool_images']} "
                f"pool and {dataset['test_images']} test images, classes {', '.join(dataset['classes'])} with imbalance "
                f"rho {dataset['rho']} (generated by the first run under `<out>/data/shapes/`). YOLOX-nano learns it from "
                "scratch on CPU.")
        return [head]
    spec = dataset["spec"]
    return [
        (f"`benchmarks/fashion_pool.py` (`build(root, n_pool={spec['n_pool']}, n_test={spec['n_test']}, rho={spec['rho']}, "
         f"seed={spec['seed']})`): real Fashion-MNIST product photos (Debian `dataset-fashion-mnist`, "
         f"{dataset.get('objects_from', '')}), scaled {spec['min_scale']:g}-{spec['max_scale']:g}x, tinted, mirrored and "
         f"alpha-pasted onto random crops of {len(dataset['backgrounds'])} real photos bundled with scikit-learn and "
         f"scikit-image; images {spec['min_side']}-{spec['max_side']} px a side, 1-{spec['max_objects']} objects, "
         f"{dataset['pool_empty_images']} of {spec['n_pool']} pool images empty. Pool objects from Fashion-MNIST train, "
         "test objects from t10k; pool classes drawn with weight rho**c, test classes uniform."),
        "",
        _table(["Class", "pool objects", "test objects"],
               [[c, str(dataset["pool_objects_per_class"][c]), str(dataset["test_objects_per_class"][c])]
                for c in dataset["classes"]]),
    ]


def write_results(path: str, setup: Setup, command: str, init: str, dataset: dict, pre: dict | None,
                  curves: list[Curve], summary: dict, wall: float, loads: tuple, out: str,
                  reference: dict | None = None, status: str = "") -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    plot(summary, os.path.join(folder, f"{stem}.png"), reference,
         "Trap pool (long tail, bursts)" if setup.pool == "trap" else "Fashion-on-photos pool")
    comparison = os.path.join(out, "runs", "comparison", "comparison.png")
    if os.path.exists(comparison):
        shutil.copyfile(comparison, os.path.join(folder, f"{stem}_comparison.png"))
    per_run = ", ".join(f"{c.strategy}/seed{c.seed} {c.seconds / 60:.1f} min" for c in curves)
    starts = {}
    for c in curves:
        starts.setdefault(c.start or "not recorded", set()).add(c.seed)
    total = sum(c.seconds for c in curves) + (pre["seconds"] if pre else 0.0) + (reference["seconds"] if reference else 0.0)
    lines = [
        f"# Label efficiency: {setup.name}",
        "",
        *([status, ""] if status else []),
        (f"Command: `{command}`. Wall time {total / 60:.1f} min in all (pretraining "
         f"{(pre['seconds'] if pre else 0.0) / 60:.1f} min + runs; this invocation {wall / 60:.1f} min, load average "
         f"{loads[0]} at its start and {loads[1]} at its end: other jobs shared the 2 cores)."),
        "",
        f"Machine: {machine()}.",
        "",
        "## Pool",
        "",
        *pool_description(dataset),
        "",
        "## Setup",
        "",
        (f"Strategies {', '.join(setup.strategies)}; seeds {setup.seeds} (a seed changes the seed set, the splits, "
         "training randomness and `random`'s draws; the pool and the start weights are the same for all runs)."),
        "Shared overrides of every run: `" + " ".join(_overrides(setup.loop)) + "`.",
        *([f"Per round: the loop runs once per round, each call one round longer with that round's budget: "
           f"strategy.budget = {', '.join(map(str, setup.budgets))} (labelled {_labelled_schedule(setup)}), "
           "`accept_new_values=true`."] if setup.budgets else []),
        "",
    ]
    if pre:
        lines += [f"Start weights: YOLOX pretrained on the digits source task ({pre['images']} images of scikit-learn's "
                  f"handwritten digits pasted the same way; `" + " ".join(_overrides(setup.pretrain)) + "`"
                  + "".join(f", then from those weights {n} images `" + " ".join(_overrides(o)) + "`"
                            for n, o in setup.pretrain_more) + "; digits test "
                  f"mAP50 {pre['digits_test_map50']:.3f}), class head dropped.", ""]
    else:
        lines += ["Start weights: " + (
            "none (from scratch)." if init == "none" else
            ("YOLOX-tiny trained on camera-trap images (DrivenData's, from the zamba 2.7.2 wheel; "
             "`scripts/get_pretrained.sh`), class head re-initialised, fine-tuned with "
             f"`train.freeze={setup.loop.get('train.freeze', 'none')}`.") if init == PRETRAINED else
            f"`{init}` (`--init`)."), ""]
    if len(starts) > 1:
        lines += ["**Start weights differ between seeds** (a rebuilt pretraining is not bit-identical): "
                  + "; ".join(f"seeds {sorted(seeds)}: {start}" for start, seeds in starts.items())
                  + ". Every strategy of a seed starts from the same weights, so the paired differences and area "
                  "ratios compare like with like; the means over seeds mix the start weights.", ""]
    lines += ["## Results", "", tables(summary, curves, dataset["classes"], reference), "",
              calibration_table(out, curves), "", "## Verdict", "",
              verdict(summary), "",
              f"Per run: {per_run}.", "",
              f"![mAP50 vs labelled images]({stem}.png)", "",
              f"The loop's own comparison (raylib.report.compare_runs, y axis 0-1): ![comparison]({stem}_comparison.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def command_of(args) -> str:
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    return ("python benchmarks/label_efficiency.py " + " ".join(argv)).strip()


def report_only(setup: Setup, out: str, results: str, dataset: dict, command: str, init: str, start: float,
                load_start: float, want_reference: bool = True) -> None:
    """Results of the finished (strategy, seed) runs and of the take-all reference if it finished."""
    curves, done, kept, ledger = [], [], load_ledger(ledger_path(results)), ledger_path(results)
    for seed in setup.seeds:
        for strategy in setup.strategies:
            run_root = os.path.join(out, "runs", f"{strategy}_seed{seed}")
            timing = os.path.join(run_root, "benchmark_seconds.json")
            if os.path.exists(timing):
                with open(timing) as f:
                    seconds = json.load(f)["seconds"]
                history = report.load_history(run_root)
                curves.append(Curve(strategy, seed, history.labelled, history.map50, history.ap50,
                                    history.objects_per_class, seconds))
            elif (strategy, seed) in kept:
                curves.append(kept[(strategy, seed)])
            else:
                continue
            done.append(f"{strategy}/seed{seed}")
    pre, reference = None, None
    if init == "digits" and pretrain_cached(setup, out):
        pre = pretrain(setup, out)[1]  # nothing runs: the facts are read back
    if os.path.exists(os.path.join(out, "take_all", "seed0", "benchmark_seconds.json")) or ("take_all", 0) in kept:
        reference = take_all(setup, out, None, ledger)
    expected = len(setup.seeds) * len(setup.strategies)
    status = "" if len(done) == expected and (reference or not want_reference) else (
        f"**Partial: {len(done)} of {expected} runs finished ({', '.join(done)}); take-all reference "
        f"{'done' if reference else 'not run'}.** Finish with `{command}` (resumes).")
    summary = summarise(curves, [s for s in setup.strategies if any(c.strategy == s for c in curves)])
    loads = (f"{load_start:.1f}", f"{os.getloadavg()[0]:.1f}")
    write_results(results, setup, command, init, dataset, pre, curves, summary, time.time() - start, loads, out,
                  reference, status)
    print(tables(summary, curves, dataset["classes"], reference))
    print(verdict(summary))
    print(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPU preset: YOLOX-S, 640, larger pool, 3 seeds")
    parser.add_argument("--pool", choices=["fashion", "shapes", "trap"], default="fashion",
                        help="fashion (default: Fashion-MNIST on photos, digits-pretrained), shapes (the demo's "
                             "synthetic task, from scratch) or trap (long tail and bursts, pretrained YOLOX-tiny)")
    parser.add_argument("--preset", choices=["stable", "v1"], default="stable",
                        help="CPU preset: stable (default) or v1, the 2026-11-25 preset")
    parser.add_argument("--out", default=None, help="work folder (default outputs/label_efficiency[_full])")
    parser.add_argument("--strategies", help="comma-separated; default cls_iou,random")
    parser.add_argument("--seeds", help="comma-separated; default 0,1,2,3,4 (reduced) or 0,1,2 (full)")
    parser.add_argument("--init", default="digits",
                        help="digits (pretrain, cached), none, or a weights path (the trap pool: the pretrained "
                             "YOLOX-tiny of scripts/get_pretrained.sh)")
    parser.add_argument("--no-take-all", action="store_true", help="skip the take-all reference run (after the runs)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the results of the runs finished so far (a partial result)")
    parser.add_argument("--results", default=None, help="markdown to write (default benchmarks/results/label_efficiency[_full].md)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. train.epochs=20")
    args = parser.parse_args()

    if args.pool == "trap":
        setup, suffix = (TRAP_FULL, "_trap_full") if args.full else (TRAP, "_trap")
    else:
        setup = FULL if args.full else SHAPES if args.pool == "shapes" else (REDUCED_V1 if args.preset == "v1" else REDUCED)
        suffix = "_full" if args.full else "_shapes" if args.pool == "shapes" else ""
    if setup.pool == "shapes" and args.init == "digits":
        args.init = "none"  # the shapes are learnt from scratch: no source task
    if setup.pool == "trap" and args.init == "digits":
        args.init = PRETRAINED  # the camera-trap YOLOX-tiny: the regime where active learning should pay
        if not os.path.exists(PRETRAINED):
            sys.exit(f"no pretrained weights at {PRETRAINED}: run `scripts/get_pretrained.sh` first (or --init PATH)")
    if args.strategies:
        setup.strategies = args.strategies.split(",")
    if args.seeds:
        setup.seeds = [int(s) for s in args.seeds.split(",")]
    for override in args.overrides:  # merged into the shared overrides: a key given twice would be ambiguous
        key, _, value = override.partition("=")
        setup.loop[key] = value
    out = os.path.abspath(args.out or os.path.join(REPO, "outputs", f"label_efficiency{suffix}"))
    results = args.results or os.path.join(HERE, "results", f"label_efficiency{suffix}.md")
    start, load_start = time.time(), os.getloadavg()[0]

    if setup.pool == "shapes":
        dataset = {"pool": "shapes", "pool_images": setup.n_pool, "test_images": setup.n_test, "rho": setup.rho,
                   "classes": ["circle", "square", "triangle", "star"]}  # conf/data/synthetic.yaml's
    elif setup.pool == "trap":
        dataset = {"pool": "trap", **trap_pool.build(os.path.join(out, "data", "trap"), setup.n_pool, setup.n_test,
                                                     rho=setup.rho)}
    else:
        dataset = fashion_pool.build(os.path.join(out, "data", "fashion"), setup.n_pool, setup.n_test, setup.rho, seed=0)
    print(f"pool: {setup.pool} ({dataset['pool_images']} + {dataset['test_images']} test images)")
    pre = None
    if args.report_only:
        report_only(setup, out, results, dataset, command_of(args), args.init, start, load_start,
                    not args.no_take_all)
        return
    if args.init == "digits":
        init, pre = pretrain(setup, out)
        print(f"start weights: {init} (digits test mAP50 {pre['digits_test_map50']:.3f})", flush=True)
    else:
        init = None if args.init == "none" else os.path.abspath(args.init)
    command = command_of(args)
    all_seeds, curves, reference = list(setup.seeds), [], None

    def write(status: str = "") -> dict:
        summary = summarise(curves, setup.strategies)
        loads = (f"{load_start:.1f}", f"{os.getloadavg()[0]:.1f}")
        write_results(results, setup, command, args.init, dataset, pre, curves, summary, time.time() - start, loads,
                      out, reference, status)
        return summary

    # Seed by seed, the results file rewritten after each: a run cut short leaves its partial result.
    for i, seed in enumerate(all_seeds):
        setup.seeds = [seed]
        weights = (f"digits-pretrained, digits test mAP50 {pre['digits_test_map50']:.3f}" if pre
                   else "from scratch" if init is None else init)
        curves += run_all(setup, out, init, ledger_path(results), weights)
        setup.seeds = all_seeds[:i + 1]
        if i == 0 and not args.no_take_all:  # after the first seed: partial results have their reference
            reference = take_all(setup, out, init, ledger_path(results))
        if i + 1 < len(all_seeds) or not args.no_take_all:
            write(f"**Partial: seeds {setup.seeds} of {all_seeds} done** (rerun the command to resume).")
    summary = write()
    print(tables(summary, curves, dataset["classes"], reference))
    print(verdict(summary))
    print(f"\nresults: {results}")


if __name__ == "__main__":
    main()
