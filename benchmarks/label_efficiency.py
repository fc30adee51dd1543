"""Label efficiency: mAP50 vs labelled images for cls_iou, random and entropy on a harder pool.

    python benchmarks/label_efficiency.py            # reduced CPU run (2 cores: see the results file)
    python benchmarks/label_efficiency.py --full     # one GPU: YOLOX-S, input 640, larger pool, 3 seeds
    python benchmarks/label_efficiency.py --strategies cls_iou,random --seeds 0   # a subset

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

Runs resume: rerunning the same command skips finished runs and committed stages. The table (mean, std
and range over seeds; the ratio cls_iou / random of mean mAP50 at equal labels; paired per-seed ratios)
is printed and written with the machine description to benchmarks/results/label_efficiency.md, with
the loop's comparison PNG and our own plot (y axis not clipped to [0, 1]) beside it.
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

from raylib import report  # noqa: E402


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


REDUCED = Setup(
    name="reduced (CPU)",
    n_pool=800, n_test=200, rho=0.7, seeds=[0, 1], strategies=["cls_iou", "random", "entropy"],
    loop={
        "model": "yolox_nano", "model.input_size": 160,
        "train.epochs": 15, "train.batch_size": 8, "train.basic_lr_per_img": 0.0025, "train.mixup_prob": 0.0,
        "train.warmup_epochs": 1, "train.no_aug_epochs": 3, "train.eval_interval": 5,
        "loop.rounds": 4, "loop.seed_size": 60, "loop.last_round_takes_all": False,
        # A weak CPU model's confidences rarely pass the seed's 0.2 floor; k x classes > budget, so the
        # budget (lowest scores first) sets the labels per round and every strategy gets the same count.
        "strategy.k": 10, "strategy.min_score": 0.05, "strategy.budget": 30,
    },
    pretrain_images=800,
    pretrain={"model": "yolox_nano", "model.input_size": 160, "train.epochs": 30, "train.batch_size": 16,
              "train.basic_lr_per_img": 0.0025, "train.mixup_prob": 0.0, "train.warmup_epochs": 2,
              "train.no_aug_epochs": 3, "train.eval_interval": 10},
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


def run_job(overrides: list[str], log_path: str) -> float:
    """`jobs/loop.py <overrides>` in its own process (output to `log_path`); returns its wall seconds."""
    command = [sys.executable, os.path.join(REPO, "jobs", "loop.py"), *overrides]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}); see {log_path}")
    return time.time() - start


def _strip_class_head(src: str, dst: str) -> None:
    """The pretrained weights without the class head, so that every run starts it fresh (seed 6.3)."""
    import torch

    payload = torch.load(src, map_location="cpu", weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("head.cls_preds.")}
    payload["class_names"], payload["num_classes"] = [], 0
    torch.save(payload, dst)


def pretrain(setup: Setup, out: str) -> tuple[str, dict]:
    """Weights pretrained on the digits source task (cached); returns (path, facts for the report)."""
    root = os.path.join(out, "data", "digits")
    summary = fashion_pool.build_digits(root, n_pool=setup.pretrain_images, n_test=max(100, setup.pretrain_images // 8))
    run_root = os.path.join(out, "pretrain", "digits")
    init = os.path.join(out, "pretrain", "init_no_class_head.pt")
    timing = os.path.join(out, "pretrain", "benchmark_seconds.json")
    if not os.path.exists(init):
        print(f"pretraining on {summary['pool_images']} digit images -> {run_root}", flush=True)
        seconds = run_job(_data_overrides(root, fashion_pool.DIGIT_CLASSES) + _overrides(setup.pretrain) + [
            f"run_root={run_root}", "loop.rounds=1", f"loop.seed_size={setup.pretrain_images}"],
            os.path.join(out, "logs", "pretrain.log"))
        _strip_class_head(os.path.join(run_root, "round=00", "train", "model.pt"), init)
        with open(timing, "w") as f:
            json.dump({"seconds": seconds}, f)
    seconds = float("nan")
    if os.path.exists(timing):
        with open(timing) as f:
            seconds = json.load(f)["seconds"]
    with open(os.path.join(run_root, "round=00", "metrics.json")) as f:
        digits_map50 = json.load(f)["map50"]
    return init, {"images": summary["pool_images"], "digits_test_map50": digits_map50, "seconds": seconds}


@dataclass
class Curve:
    strategy: str
    seed: int
    labelled: list[int]
    map50: list[float]
    ap50: list[list[float | None]]
    objects_per_class: list[list[int]]
    seconds: float


def run_all(setup: Setup, out: str, init: str | None) -> list[Curve]:
    fashion_root = os.path.join(out, "data", "fashion")
    curves = []
    for seed in setup.seeds:
        for strategy in setup.strategies:
            name = f"{strategy}_seed{seed}"
            run_root = os.path.join(out, "runs", name)
            overrides = (_data_overrides(fashion_root, fashion_pool.CLASSES) + _overrides(setup.loop)
                         + [f"strategy={strategy}", f"seed={seed}", f"run_root={run_root}"]
                         + ([f"model.weights={init}"] if init else []))
            timing = os.path.join(run_root, "benchmark_seconds.json")
            if os.path.exists(timing):
                with open(timing) as f:
                    seconds = json.load(f)["seconds"]
                print(f"{name}: done before ({seconds:.0f} s)", flush=True)
            else:
                print(f"{name}: running ...", flush=True)
                seconds = run_job(overrides, os.path.join(out, "logs", f"{name}.log"))
                with open(timing, "w") as f:
                    json.dump({"seconds": seconds, "overrides": overrides}, f, indent=1)
            history = report.load_history(run_root)
            curves.append(Curve(strategy, seed, history.labelled, history.map50, history.ap50,
                                history.objects_per_class, seconds))
            print(f"{name}: {seconds:.0f} s; labelled {history.labelled}; mAP50 "
                  f"{[round(m, 4) for m in history.map50]}", flush=True)
    return curves


# ---------------------------------------------------------------------------------------- results


def summarise(curves: list[Curve], strategies: list[str]) -> dict:
    """Per strategy and round: labelled (mean), mAP50 mean/std/min/max over seeds; the cls_iou / random
    ratio of mean mAP50 at equal labels (random's mean curve interpolated at cls_iou's label counts
    when they differ) and the paired per-seed ratios."""
    by = {s: [c for c in curves if c.strategy == s] for s in strategies}
    n_rounds = min(len(c.map50) for c in curves)
    stats = {}
    for strategy, runs in by.items():
        maps = np.array([c.map50[:n_rounds] for c in runs])
        labelled = np.array([c.labelled[:n_rounds] for c in runs], dtype=float)
        stats[strategy] = {"labelled": labelled.mean(0), "mean": maps.mean(0), "std": maps.std(0),
                           "min": maps.min(0), "max": maps.max(0), "per_seed": maps, "seeds": [c.seed for c in runs]}
    ratios = {}
    if "random" in stats:
        base = stats["random"]
        for strategy, s in stats.items():
            if strategy == "random":
                continue
            at = np.interp(s["labelled"], base["labelled"], base["mean"])
            paired = []
            for seed in s["seeds"]:
                if seed in base["seeds"]:
                    a = s["per_seed"][s["seeds"].index(seed)]
                    b = base["per_seed"][base["seeds"].index(seed)]
                    paired.append(np.where(b > 0, a / np.where(b > 0, b, 1), np.nan))
            ratios[strategy] = {"ratio": np.where(at > 0, s["mean"] / np.where(at > 0, at, 1), np.nan),
                                "paired": np.array(paired)}
    return {"n_rounds": n_rounds, "stats": stats, "ratios": ratios}


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def tables(summary: dict, curves: list[Curve], classes: list[str]) -> str:
    n_rounds, stats, ratios = summary["n_rounds"], summary["stats"], summary["ratios"]
    rows = []
    for strategy, s in stats.items():
        for r in range(n_rounds):
            seeds = " / ".join(f"{v:.4f}" for v in s["per_seed"][:, r])
            rows.append([strategy, str(r), f"{s['labelled'][r]:.0f}", f"{s['mean'][r]:.4f}", f"{s['std'][r]:.4f}",
                         f"{s['min'][r]:.4f}-{s['max'][r]:.4f}", seeds])
    text = "### mAP50 (performance test set) vs labelled images\n\n" + _table(
        ["Strategy", "Round", "Labelled images", "mAP50 mean", "std", "range", "per seed"], rows)
    for strategy, ratio in ratios.items():
        rows = []
        for r in range(n_rounds):
            paired = " / ".join("n/a" if np.isnan(v) else f"{v:.2f}" for v in ratio["paired"][:, r]) if len(ratio["paired"]) else ""
            value = ratio["ratio"][r]
            rows.append([str(r), f"{stats[strategy]['labelled'][r]:.0f}", "n/a" if np.isnan(value) else f"{value:.2f}", paired])
        text += (f"\n\n### {strategy} / random, mAP50 at equal labelled images\n\n"
                 + _table(["Round", "Labelled images", "ratio of means", "paired per seed"], rows))
    last = n_rounds - 1
    header = ["Class"] + [f"{s} AP50" for s in stats] + [f"{s} objects labelled" for s in stats]
    rows = []
    for c, name in enumerate(classes):
        aps, objs = [], []
        for strategy in stats:
            runs = [x for x in curves if x.strategy == strategy]
            values = [x.ap50[last][c] for x in runs if x.ap50[last][c] is not None]
            aps.append(f"{np.mean(values):.3f}" if values else "n/a")
            objs.append(f"{np.mean([x.objects_per_class[last][c] for x in runs]):.1f}")
        rows.append([name] + aps + objs)
    text += (f"\n\n### Last round (round {last}): AP50 per class and labelled objects per class (means over seeds)\n\n"
             + _table(header, rows))
    return text


def verdict(summary: dict) -> str:
    """One honest sentence per compared strategy: is the gap larger than the seed-to-seed spread?"""
    lines = []
    stats = summary["stats"]
    for strategy in summary["ratios"]:
        s, b = stats[strategy], stats["random"]
        later = range(1, summary["n_rounds"])
        gaps = [s["mean"][r] - np.interp(s["labelled"][r], b["labelled"], b["mean"]) for r in later]
        spread = [max(s["max"][r] - s["min"][r], b["max"][r] - b["min"][r]) for r in later]
        wins = sum(g > 0 for g in gaps)
        separated = sum(abs(g) > sp for g, sp in zip(gaps, spread))
        if min(len(s["seeds"]), len(b["seeds"])) < 2:
            judgement = "One seed only: no seed-to-seed spread to judge the gap against."
        elif separated == len(gaps) and gaps:
            judgement = "The gap is larger than the seed-to-seed range at every round."
        else:
            judgement = "Not separable from seed-to-seed noise at this budget and number of seeds."
        lines.append(
            f"- **{strategy} vs random**: ahead in {wins} of {len(gaps)} rounds after the seed set (mean gap "
            f"{np.mean(gaps):+.4f} mAP50); the gap exceeds the seed-to-seed range in {separated} of {len(gaps)}. "
            + judgement)
    return "\n".join(lines)


def plot(summary: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for strategy, s in summary["stats"].items():
        ax.plot(s["labelled"], s["mean"], marker="o", label=f"{strategy} ({len(s['seeds'])} seeds)")
        ax.fill_between(s["labelled"], s["min"], s["max"], alpha=0.2)
    ax.set(xlabel="labelled images", ylabel="mAP50 (balanced test set)",
           title="Fashion-on-photos pool: mAP50 vs labelled images (mean, min-max over seeds)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend()
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


def write_results(path: str, setup: Setup, command: str, dataset: dict, pre: dict | None, curves: list[Curve],
                  summary: dict, wall: float, loads: tuple, out: str) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    plot(summary, os.path.join(folder, f"{stem}.png"))
    comparison = os.path.join(out, "runs", "comparison", "comparison.png")
    if os.path.exists(comparison):
        shutil.copyfile(comparison, os.path.join(folder, f"{stem}_comparison.png"))
    per_run = ", ".join(f"{c.strategy}/seed{c.seed} {c.seconds / 60:.1f} min" for c in curves)
    total = sum(c.seconds for c in curves) + (pre["seconds"] if pre else 0.0)
    spec = dataset["spec"]
    lines = [
        f"# Label efficiency: {setup.name}",
        "",
        (f"Command: `{command}`. Wall time {total / 60:.1f} min in all (pretraining "
         f"{(pre['seconds'] if pre else 0.0) / 60:.1f} min + runs; this invocation {wall / 60:.1f} min, load average "
         f"{loads[0]} at its start and {loads[1]} at its end: other jobs shared the 2 cores)."),
        "",
        f"Machine: {machine()}.",
        "",
        "## Pool",
        "",
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
        "",
        "## Setup",
        "",
        (f"Strategies {', '.join(setup.strategies)}; seeds {setup.seeds} (a seed changes the seed set, the splits, "
         "training randomness and `random`'s draws; the pool and the pretrained weights are the same for all runs)."),
        "Shared overrides of every run: `" + " ".join(_overrides(setup.loop)) + "`.",
        "",
    ]
    if pre:
        lines += [f"Start weights: YOLOX pretrained on the digits source task ({pre['images']} images of scikit-learn's "
                  f"handwritten digits pasted the same way; `" + " ".join(_overrides(setup.pretrain)) + "`; digits test "
                  f"mAP50 {pre['digits_test_map50']:.3f}), class head dropped.", ""]
    else:
        lines += ["Start weights: none (from scratch).", ""]
    lines += ["## Results", "", tables(summary, curves, dataset["classes"]), "", "## Verdict", "", verdict(summary), "",
              f"Per run: {per_run}.", "",
              f"![mAP50 vs labelled images]({stem}.png)", "",
              f"The loop's own comparison (raylib.report.compare_runs, y axis 0-1): ![comparison]({stem}_comparison.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPU preset: YOLOX-S, 640, larger pool, 3 seeds")
    parser.add_argument("--out", default=None, help="work folder (default outputs/label_efficiency[_full])")
    parser.add_argument("--strategies", help="comma-separated; default cls_iou,random,entropy")
    parser.add_argument("--seeds", help="comma-separated; default 0,1 (reduced) or 0,1,2 (full)")
    parser.add_argument("--init", default="digits", help="digits (pretrain, cached), none, or a weights path")
    parser.add_argument("--results", default=None, help="markdown to write (default benchmarks/results/label_efficiency[_full].md)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. train.epochs=20")
    args = parser.parse_args()

    setup = FULL if args.full else REDUCED
    suffix = "_full" if args.full else ""
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

    dataset = fashion_pool.build(os.path.join(out, "data", "fashion"), setup.n_pool, setup.n_test, setup.rho, seed=0)
    print(f"pool: {os.path.join(out, 'data', 'fashion')} ({dataset['pool_images']} + {dataset['test_images']} test images)")
    pre = None
    if args.init == "digits":
        init, pre = pretrain(setup, out)
        print(f"start weights: {init} (digits test mAP50 {pre['digits_test_map50']:.3f})", flush=True)
    else:
        init = None if args.init == "none" else os.path.abspath(args.init)
    curves = run_all(setup, out, init)
    summary = summarise(curves, setup.strategies)
    command = "python benchmarks/label_efficiency.py " + " ".join(sys.argv[1:])
    loads = (f"{load_start:.1f}", f"{os.getloadavg()[0]:.1f}")
    write_results(results, setup, command.strip(), dataset, pre, curves, summary, time.time() - start, loads, out)
    print(tables(summary, curves, dataset["classes"]))
    print(verdict(summary))
    print(f"\nresults: {results}")


if __name__ == "__main__":
    main()
