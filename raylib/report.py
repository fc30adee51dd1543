"""Markdown + PNG report of a run, reproducing the seed's figures 6.4-6.8 for our rounds, and a
comparison of several runs (a Hydra multirun over `strategy=` and `seed=`).

Reads only committed round outputs (labels, thresholds, metrics), so it can be rerun at any time.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from raylib import paths, savings, storage  # noqa: E402
from raylib.config import Config  # noqa: E402
from raylib.paths import RoundPaths  # noqa: E402


@dataclass
class RunHistory:
    """What the report shows, per training round (index = round)."""

    classes: list[str]
    strategy: str = ""
    seed: int = 0
    pool_size: int = 0
    splits: list[dict[str, int]] = field(default_factory=list)  # 6.4
    objects_per_class: list[list[int]] = field(default_factory=list)  # 6.7
    thresholds: list[list[float | None]] = field(default_factory=list)  # 6.5 (selection after round r)
    selected: list[bool] = field(default_factory=list)  # whether round r selected by class quotas
    ap50: list[list[float | None]] = field(default_factory=list)  # 6.6
    map50: list[float] = field(default_factory=list)  # 6.8
    labelled: list[int] = field(default_factory=list)


def write_run_info(run_root: str, cfg: Config, class_names: list[str]) -> None:
    """What the run is, for the report's title and for grouping runs in the comparison."""
    storage.write_text(paths.run_info(run_root), json.dumps({
        "strategy": cfg.strategy.name, "seed": cfg.seed, "model": cfg.model.size, "k": cfg.strategy.k,
        "classes": class_names}))


def row_count(uri: str) -> int:
    """Rows of a Parquet file, or of every `.parquet` file under a folder, from the files' footers (the
    pool manifest of a million images is not read for its length)."""
    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        files = [path]
    else:
        files = [storage.resolve(file_uri)[1] for file_uri in storage.list_files(uri, ".parquet")]
    return sum(pq.read_metadata(file, filesystem=fs).num_rows for file in files)


def run_roots(runs_root: str) -> list[str]:
    """The runs beside each other under `runs_root`: its sub-folders that hold a `run.json`. One
    listing of `runs_root` itself and one look per sub-folder, never a recursive listing (a run
    holds a round's pre-annotations: a file per selected image)."""
    fs, path = storage.resolve(runs_root)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    prefix = "s3://" if storage.is_s3(runs_root) else ""
    folders = sorted(prefix + info.path for info in infos if info.type == pafs.FileType.Directory)
    return [folder for folder in folders if storage.exists(paths.run_info(folder))]


def load_history(run_root: str) -> RunHistory:
    run = json.loads(storage.read_text(paths.run_info(run_root)))
    history = RunHistory(classes=run["classes"], strategy=run["strategy"], seed=run["seed"])
    manifest = paths.pool_manifest(run_root)
    if storage.exists(manifest):
        history.pool_size = row_count(manifest)
    num_classes = len(history.classes)
    round_idx = 0
    while storage.exists(RoundPaths(run_root, round_idx).metrics):
        rp = RoundPaths(run_root, round_idx)
        labels = storage.read_table(paths.round_labels(run_root, round_idx), columns=["split", "objects"])
        split_counts = {item["values"]: item["counts"] for item in labels.column("split").value_counts().to_pylist()}
        history.splits.append(split_counts)
        history.labelled.append(labels.num_rows)
        objects = pc.list_flatten(labels.column("objects"))
        class_ids = pc.struct_field(objects, "class_id").to_numpy()
        history.objects_per_class.append(np.bincount(class_ids.astype(int), minlength=num_classes).tolist())
        metrics = json.loads(storage.read_text(rp.metrics))
        history.map50.append(float(metrics["map50"]))
        history.ap50.append([metrics["ap50_per_class"].get(name) for name in history.classes])
        thresholds: list[float | None] = [None] * num_classes
        threshold_rows = storage.read_table(rp.thresholds).to_pylist() if storage.exists(rp.thresholds) else []
        history.selected.append(bool(threshold_rows))  # none: no selection, or the take-all one
        for row in threshold_rows:
            if 0 <= row["class_id"] < num_classes:
                thresholds[row["class_id"]] = row["threshold"]
        history.thresholds.append(thresholds)
        round_idx += 1
    return history


def _save_png(fig, uri: str) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(uri, buffer.getvalue())


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    return f"{100 * value:.1f}%" if percent else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(run_root: str) -> str:
    """Write `<run_root>/report/report.md` and its PNGs; returns the report's URI."""
    history = load_history(run_root)
    out = paths.report_dir(run_root)
    rounds = list(range(1, len(history.map50) + 1))
    sections = [f"# Active-learning run: strategy `{history.strategy}`, seed {history.seed}\n",
                f"Run root: `{run_root}`; pool of {history.pool_size} images; {len(rounds)} round(s) trained.\n"]
    sections += _review_links(run_root, len(rounds))
    if not rounds:
        storage.write_text(paths.report_file(out), "\n".join(sections) + "\nNo round evaluated yet.\n")
        return paths.report_file(out)
    sections += _splits_section(history, rounds, out)
    sections += _thresholds_section(history, rounds, out)
    sections += _ap50_section(history, rounds, out)
    sections += _objects_section(history, rounds, out)
    sections += _map50_section(history, rounds, out)
    sections += _calibration_section(run_root, len(rounds), out)
    uri = paths.report_file(out)
    storage.write_text(uri, "\n".join(sections))
    return uri


def _per_class_plot(x: list, per_class: list[list[float]], names: list[str], uri: str, **axes) -> None:
    """One line per class (`per_class[c]`: its values at `x`; None drawn as a gap), legend of class names."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in zip(names, per_class):
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", label=name)
    ax.set(**axes)
    ax.legend(fontsize=7)
    _save_png(fig, uri)


def _splits_section(history: RunHistory, rounds: list[int], out: str) -> list[str]:
    """6.4: images per split per round."""
    split_names = ["train", "val", "test"]
    rows = [["Train+Val+Test"] + [str(n) for n in history.labelled],
            ["Unknown (pool)"] + [str(history.pool_size - n) for n in history.labelled]]
    rows += [[s.capitalize()] + [str(counts.get(s, 0)) for counts in history.splits] for s in split_names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(rounds))
    for s in split_names:
        values = np.array([counts.get(s, 0) for counts in history.splits])
        ax.bar(rounds, values, bottom=bottom, label=s)
        bottom += values
    ax.set(xlabel="training round", ylabel="images", title="Labelled images per split")
    ax.legend()
    _save_png(fig, storage.join(out, "splits.png"))
    return ["## Images per split (figure 6.4)\n", _table(["Set"] + [str(r) for r in rounds], rows),
            "\n![splits](splits.png)\n"]


def _thresholds_section(history: RunHistory, rounds: list[int], out: str) -> list[str]:
    """6.5: per-class thresholds of each class-quota selection (the take-all one has none and is left out)."""
    selected_rounds = [r for r in rounds if history.selected[r - 1]]
    selections = [f"{r} to {r + 1}" for r in selected_rounds]
    chosen = [history.thresholds[r - 1] for r in selected_rounds]
    rows = [[name] + [_fmt(th[c], percent=True) for th in chosen] for c, name in enumerate(history.classes)]
    for label, reduce in (("Average", np.mean), ("Median", np.median)):
        values = [[v for v in th if v is not None] for th in chosen]
        rows.append([label] + [_fmt(float(reduce(v)) if v else None, percent=True) for v in values])
    _per_class_plot(selections, [[th[c] for th in chosen] for c in range(len(history.classes))], history.classes,
                    storage.join(out, "thresholds.png"), xlabel="selection (round to round)",
                    ylabel="threshold (k-th lowest score)", title="Per-class thresholds")
    return ["## Selection upper threshold per class (figure 6.5)\n", _table(["Class"] + selections, rows),
            "\n![thresholds](thresholds.png)\n"]


def _ap50_section(history: RunHistory, rounds: list[int], out: str) -> list[str]:
    """6.6: AP50 per class per round, and mAP50."""
    names = history.classes
    rows = [[name] + [_fmt(ap[c]) for ap in history.ap50] for c, name in enumerate(names)]
    rows.append(["**mAP50**"] + [_fmt(m) for m in history.map50])
    _per_class_plot(rounds, [[ap[c] for ap in history.ap50] for c in range(len(names))], names,
                    storage.join(out, "ap50.png"), xlabel="training round", ylabel="AP50", ylim=(0, 1),
                    title="AP50 per class")
    return ["## AP50 per class on the performance test set (figure 6.6)\n",
            _table(["Class"] + [str(r) for r in rounds], rows), "\n![ap50](ap50.png)\n"]


def _objects_section(history: RunHistory, rounds: list[int], out: str) -> list[str]:
    """6.7: labelled objects per class per round."""
    names = history.classes
    rows = [[name] + [str(objs[c]) for objs in history.objects_per_class] for c, name in enumerate(names)]
    _per_class_plot(rounds, [[objs[c] for objs in history.objects_per_class] for c in range(len(names))], names,
                    storage.join(out, "objects.png"), xlabel="training round", ylabel="labelled objects",
                    title="Labelled objects per class")
    return ["## Labelled objects per class (figure 6.7)\n", _table(["Class"] + [str(r) for r in rounds], rows),
            "\n![objects](objects.png)\n"]


def _map50_section(history: RunHistory, rounds: list[int], out: str) -> list[str]:
    """6.8: mAP50 vs labelled images."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.labelled, history.map50, marker="o")
    ax.set(xlabel="labelled images", ylabel="mAP50", ylim=(0, 1), title="mAP50 vs labelled images")
    _save_png(fig, storage.join(out, "map50.png"))
    return ["## mAP50 vs labelled images (figure 6.8)\n",
            _table(["Round", "Labelled images", "mAP50"],
                   [[str(r), str(n), _fmt(m)] for r, n, m in zip(rounds, history.labelled, history.map50)]),
            "\n![map50](map50.png)\n"]


def _review_links(run_root: str, n_rounds: int) -> list[str]:
    """Links to the review pages of the selections made so far (seed set, rounds 0..n_rounds-1: raylib/review.py)."""
    named = [("seed set", RoundPaths(run_root, paths.SEED_ROUND))] + [(f"round {r}", RoundPaths(run_root, r))
                                                                      for r in range(n_rounds)]
    found = [(name, rp.review_page) for name, rp in named if storage.exists(rp.review_page)]
    if not found:
        return []
    return ["## What each round selected\n",
            "Review pages (thumbnails with the model's boxes, scores, thresholds): "
            + ", ".join(f"[{name}]({paths.report_link(run_root, page)})" for name, page in found) + "\n"]


def _calibration_section(run_root: str, n_rounds: int, out: str) -> list[str]:
    """Per round: rank correlation of loc_conf / cls_conf with true IoU on val and the reliability table
    (mean true IoU per loc_conf bin, with counts) and plot; rounds without a calibration are left out."""
    found = []
    for r in range(n_rounds):
        rp = RoundPaths(run_root, r)
        if storage.exists(rp.calibration_summary) and storage.exists(rp.calibration):
            found.append((r + 1, json.loads(storage.read_text(rp.calibration_summary)),
                          storage.read_table(rp.calibration).to_pylist()))
    if not found:
        return []
    rows = [[str(r), str(s["n_images"]), str(s["n_detections"]), str(s["n_matched_iou50"]),
             _fmt(s["spearman_loc_conf_true_iou"]), _fmt(s["spearman_cls_conf_true_iou"]),
             _fmt(s["mean_loc_conf"]), _fmt(s["mean_true_iou"])] for r, s, _ in found]
    bins = [f"{b['bin_lo']:.1f}-{b['bin_hi']:.1f}" for b in found[0][2]]
    reliability = [[label] + [f"{_fmt(t[i]['mean_true_iou'])} ({t[i]['n']})" if t[i]["n"] else "-" for _, _, t in found]
                   for i, label in enumerate(bins)]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="calibrated")
    for r, _, table in found:
        used = [b for b in table if b["n"]]
        ax.plot([b["mean_loc_conf"] for b in used], [b["mean_true_iou"] for b in used], marker="o", label=f"round {r}")
    ax.set(xlabel="loc_conf (bin mean)", ylabel="true IoU (bin mean)", xlim=(0, 1), ylim=(0, 1),
           title="Reliability of loc_conf on the val split")
    ax.legend(fontsize=7)
    _save_png(fig, storage.join(out, "calibration.png"))
    min_score = found[0][1].get("min_score")
    return ["## Calibration: loc_conf against true IoU on the labelled val split\n",
            (f"Detections with cls_conf x loc_conf >= {min_score} (those the strategies see), matched greedily by "
             "score to same-class ground truth; true IoU 0 when unmatched. Spearman: rank correlation with true IoU.\n"),
            _table(["Round", "Val images", "Detections", "IoU >= 0.5", "Spearman loc_conf", "Spearman cls_conf",
                    "mean loc_conf", "mean true IoU"], rows),
            "\nMean true IoU per loc_conf bin (detections):\n",
            _table(["loc_conf bin"] + [f"round {r}" for r, _, _ in found], reliability),
            "\n![calibration](calibration.png)\n"]


def compare_runs(runs_root: str, out_dir: str) -> str | None:
    """mAP50 vs labelled images per strategy (mean and min-max spread over seeds) for every run under
    `runs_root` (`run_roots`: `runs_root/*/run.json`), and whether each strategy pays against `random`
    paired by seed (raylib.savings); writes `comparison.md` + `comparison.png`. None if no runs."""
    by_strategy: dict[str, list[RunHistory]] = {}
    for run_root in run_roots(runs_root):
        history = load_history(run_root)
        if history.map50:
            by_strategy.setdefault(history.strategy, []).append(history)
    if not by_strategy:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = []
    for strategy, runs in sorted(by_strategy.items()):
        n_rounds = min(len(run.map50) for run in runs)
        labelled = np.array([run.labelled[:n_rounds] for run in runs], dtype=float)
        map50 = np.array([run.map50[:n_rounds] for run in runs])
        x, mean = labelled.mean(axis=0), map50.mean(axis=0)
        ax.plot(x, mean, marker="o", label=f"{strategy} ({len(runs)} seed(s))")
        ax.fill_between(x, map50.min(axis=0), map50.max(axis=0), alpha=0.2)
        rows += [[strategy, str(r + 1), f"{x[r]:.0f}", f"{mean[r]:.4f}", f"{map50[:, r].min():.4f}-{map50[:, r].max():.4f}"]
                 for r in range(n_rounds)]
    ax.set(xlabel="labelled images", ylabel="mAP50 (performance test set)", ylim=(0, 1),
           title="Label efficiency per strategy")
    ax.legend()
    _save_png(fig, storage.join(out_dir, "comparison.png"))
    uri = paths.comparison_file(out_dir)
    pays = savings.markdown(savings.compare([run for runs in by_strategy.values() for run in runs]))
    storage.write_text(uri, "# Strategy comparison\n\n" + _table(
        ["Strategy", "Round", "Labelled images (mean)", "mAP50 mean", "mAP50 range"], rows)
        + "\n\n![comparison](comparison.png)\n\n" + pays)
    return uri
