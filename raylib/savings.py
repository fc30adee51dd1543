"""Will active learning pay on your data? Each strategy against `random`, paired by seed, over a sweep's runs.

A run is a curve: its strategy, seed, and per round the labelled images and the test mAP50 (`report.RunHistory`
and the label-efficiency benchmark's `Curve` both are). Runs of two strategies with the same seed share the
seed set, the splits and the training randomness, so their difference is the strategy's doing: every
statistic here is over those per-seed differences (a paired t interval), never over two independent means.

- Common counts: where runs label different numbers of images (a round's union of per-class picks), each
  curve is interpolated linearly in the labelled count onto the union of every run's counts within the
  range that every run covers; outside it nothing is extrapolated.
- Paired difference at each count: strategy - random on the same seed; mean, 95% t interval, seeds ahead.
- Area ratio: per seed, the area under the strategy's curve over those counts (trapezoids) / random's;
  mean and 95% t interval of the ratios. Above 1: more mAP50 for the same labels along the way.
- Labels to reach 90 / 95 / 97% of the best final mAP50 (the highest mean over seeds at the last common
  count, or a given reference such as a take-all run): first crossing of each strategy's mean curve,
  linear between counts.
- A verdict per strategy on the area ratio, with the number of comparisons made (no correction).
- Seeds to resolve a difference d: n = (2.8 sd / d)^2, sd the paired differences' std (1.96 + 0.84: a
  95% interval that excludes zero 80% of the time when the true difference is d).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

FRACTIONS = (0.90, 0.95, 0.97)
Z_POWER = 1.96 + 0.84  # two-sided 95%, 80% power

# Two-sided 95% Student t quantiles t(0.975, df), df = 1..30 (no scipy in the venv).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


class Curve(Protocol):
    strategy: str
    seed: int
    labelled: Sequence[float]
    map50: Sequence[float]


@dataclass
class RunCurve:
    strategy: str
    seed: int
    labelled: list[float]
    map50: list[float]


@dataclass
class Paired:
    """One strategy against the baseline on the seeds both ran; arrays are per common count."""

    strategy: str
    seeds: list[int]
    diff_mean: np.ndarray
    diff_half: np.ndarray  # 95% t half-width; nan with one seed
    diff_sd: np.ndarray  # std of the per-seed differences (ddof 1); nan with one seed
    ahead: np.ndarray  # seeds whose difference is > 0
    per_seed: np.ndarray  # [seeds, counts]
    area_ratios: np.ndarray  # per seed
    area_ratio: float
    area_half: float


@dataclass
class Savings:
    counts: np.ndarray  # the common labelled counts
    interpolated: bool  # some run's own counts differ from them
    baseline: str
    mean_curves: dict[str, np.ndarray]  # mean mAP50 over seeds at each count
    n_seeds: dict[str, int]
    target_map: float  # 100% for labels-to-reach
    target_source: str
    to_reach: dict[str, list[float | None]]  # per strategy, per FRACTIONS
    paired: dict[str, Paired] = field(default_factory=dict)

    @property
    def n_comparisons(self) -> int:
        """Intervals read against zero (or 1): per compared strategy, one per count and the area ratio."""
        return len(self.paired) * (len(self.counts) + 1)


def t975(df: int) -> float:
    """t(0.975, df): the table to 30, then the Cornish-Fisher expansion in 1/df (Abramowitz & Stegun
    26.7.5; within 1e-4 past 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    g = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def interval95(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval of the mean); half-width nan with one value."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else float("nan")), float("nan")
    return float(values.mean()), float(t975(n - 1) * values.std(ddof=1) / math.sqrt(n))


def seeds_needed(sd: float, difference: float) -> int:
    """Seeds for a 95% paired interval to exclude zero 80% of the time when the true difference is
    `difference` and the per-seed differences have std `sd`: (2.8 sd / difference)^2, at least 2."""
    return max(2, math.ceil((Z_POWER * sd / difference) ** 2))


def _points(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """A curve's (counts, mAP50), increasing in count; of rounds at the same count, the later one."""
    counts = np.asarray(curve.labelled, dtype=float)
    values = np.asarray(curve.map50, dtype=float)
    last = np.r_[counts[1:] != counts[:-1], True]
    return counts[last], values[last]


def common_counts(curves: Sequence[Curve]) -> tuple[np.ndarray, bool]:
    """(every run's counts within the range all runs cover, whether any run lacks one of them)."""
    points = [_points(c)[0] for c in curves if len(c.labelled)]
    if not points:
        return np.zeros(0), False
    low, high = max(p[0] for p in points), min(p[-1] for p in points)
    union = np.unique(np.concatenate(points))
    grid = union[(union >= low) & (union <= high)]
    return grid, any(not np.array_equal(p[(p >= low) & (p <= high)], grid) for p in points)


def on_counts(curve: Curve, counts: np.ndarray) -> np.ndarray:
    """The curve's mAP50 at `counts` (inside its range), linear between its own counts."""
    own, values = _points(curve)
    return np.interp(counts, own, values)


def area(values: np.ndarray, counts: np.ndarray) -> float:
    """Trapezoids under values over counts; with one count, the value (every ratio is then of heights)."""
    if len(counts) == 1:
        return float(values[0])
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(counts)))


def labels_to_reach(labelled, map50, target: float) -> float | None:
    """Labels at which the curve first reaches `target` (linear between counts); None if it never does."""
    for i, (n, m) in enumerate(zip(labelled, map50)):
        if m >= target:
            if i == 0:
                return float(n)
            n0, m0 = labelled[i - 1], map50[i - 1]
            return float(n0 + (target - m0) * (n - n0) / (m - m0))
    return None


def paired(strategy: str, runs: dict[int, np.ndarray], base: dict[int, np.ndarray], counts: np.ndarray) -> Paired:
    """`strategy`'s curves against the baseline's, both {seed: mAP50 at counts}, on their common seeds."""
    seeds = sorted(set(runs) & set(base))
    per_seed = np.array([runs[s] - base[s] for s in seeds]).reshape(len(seeds), len(counts))
    ci = [interval95(per_seed[:, i]) for i in range(len(counts))]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.array([area(runs[s], counts) / area(base[s], counts) for s in seeds])
    ratio, half = interval95(ratios)
    sd = per_seed.std(axis=0, ddof=1) if len(seeds) > 1 else np.full(len(counts), np.nan)
    return Paired(strategy=strategy, seeds=seeds, diff_mean=np.array([m for m, _ in ci]),
                  diff_half=np.array([h for _, h in ci]), diff_sd=sd, ahead=(per_seed > 0).sum(axis=0),
                  per_seed=per_seed, area_ratios=ratios, area_ratio=ratio, area_half=half)


def compare(curves: Sequence[Curve], baseline: str = "random", target_map: float | None = None,
            target_source: str = "") -> Savings:
    """Every strategy of `curves` against `baseline`, paired by seed (of a strategy's runs with one seed,
    the first). `target_map`: 100% for labels-to-reach (default: the best final mean mAP50)."""
    counts, interpolated = common_counts(curves)
    by_strategy: dict[str, dict[int, np.ndarray]] = {}
    for curve in curves:
        if len(curve.labelled):
            by_strategy.setdefault(curve.strategy, {}).setdefault(curve.seed, on_counts(curve, counts))
    means = {s: np.mean(list(runs.values()), axis=0) for s, runs in sorted(by_strategy.items())}
    if target_map is None:
        best = max(means, key=lambda s: means[s][-1]) if means and len(counts) else None
        target_map = float(means[best][-1]) if best else float("nan")
        target_source = f"the best final mean mAP50, {best}'s at {counts[-1]:.0f} labels" if best else ""
    savings = Savings(counts=counts, interpolated=interpolated, baseline=baseline, mean_curves=means,
                      n_seeds={s: len(runs) for s, runs in by_strategy.items()}, target_map=target_map,
                      target_source=target_source,
                      to_reach={s: [labels_to_reach(counts, m, f * target_map) for f in FRACTIONS]
                                for s, m in means.items()})
    if baseline in by_strategy and len(counts):
        for strategy, runs in sorted(by_strategy.items()):
            if strategy != baseline and set(runs) & set(by_strategy[baseline]):
                savings.paired[strategy] = paired(strategy, runs, by_strategy[baseline], counts)
    return savings


def verdict(p: Paired, savings: Savings) -> str:
    """One line: does `p.strategy` pay (its area ratio's 95% interval above 1), cost (below), or can't
    these seeds tell; where its paired differences clear zero; the multiplicity."""
    base, n = savings.baseline, len(p.seeds)
    if np.isnan(p.area_half):
        call = "one seed: no interval, run more seeds"
    elif p.area_ratio - p.area_half > 1:
        call = f"**pays**: more mAP50 for the same labels than {base}"
    elif p.area_ratio + p.area_half < 1:
        call = f"**costs**: less mAP50 for the same labels than {base}"
    else:
        call = f"**cannot tell** from {base} on these seeds"
    above = [f"{c:.0f}" for c, m, h in zip(savings.counts, p.diff_mean, p.diff_half) if m - h > 0]
    below = [f"{c:.0f}" for c, m, h in zip(savings.counts, p.diff_mean, p.diff_half) if m + h < 0]
    where = (f"difference above zero at {', '.join(above) or 'no'} labels, below at {', '.join(below) or 'no'} "
             f"labels (of {len(savings.counts)} counts)")
    m = savings.n_comparisons
    return (f"- **{p.strategy} vs {base}** ({n} paired seeds): {call} (area ratio {p.area_ratio:.3f} ± "
            f"{p.area_half:.3f}); {where}. {m} comparisons in this table, each a 95% interval without "
            f"correction (about 1 in 20 clears by chance; Bonferroni would read each at "
            f"{100 * (1 - 0.05 / m):.2f}%).")


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def _pm(mean: float, half: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def counts_note(savings: Savings) -> str:
    counts = ", ".join(f"{c:.0f}" for c in savings.counts)
    if not savings.interpolated:
        return f"Labelled counts: {counts} (every run labels these: no interpolation)."
    return (f"Runs label different counts, so every curve is interpolated linearly in the labelled count onto "
            f"the union of all runs' counts within the range every run covers ({counts}); nothing is extrapolated.")


def verdicts(savings: Savings) -> str:
    return "\n".join(verdict(p, savings) for p in savings.paired.values())


def markdown(savings: Savings, heading: str = "##", with_verdicts: bool = True) -> str:
    """The comparison's "will it pay" section (a `heading` section, its tables one level down): verdicts,
    area ratios, paired differences per count, labels to reach the targets, and the seeds that would
    resolve a given difference."""
    base, sub = savings.baseline, heading + "#"
    text = [f"{heading} Will active learning pay? Each strategy against `{base}`, paired by seed\n",
            counts_note(savings), ""]
    if not savings.paired:
        return "\n".join(text + [f"No `{base}` run shares a seed with another strategy: add `strategy={base}` with the "
                                 "same `seed=` values to the sweep to see whether active learning pays.\n"])
    text += [verdicts(savings), ""] if with_verdicts else []
    text += [f"{sub} Area under the mAP50-vs-labels curve relative to `{base}` (trapezoids over the counts, per seed)\n",
             _table(["Strategy", "seeds", "area ratio ± 95%", "per seed"],
                    [[s, str(len(p.seeds)), _pm(p.area_ratio, p.area_half, 3),
                      " / ".join(f"{r:.3f}" for r in p.area_ratios)] for s, p in savings.paired.items()]), ""]
    for strategy, p in savings.paired.items():
        rows = [[f"{c:.0f}", _pm(p.diff_mean[i], p.diff_half[i]), f"{p.ahead[i]} of {len(p.seeds)}",
                 f"{p.diff_sd[i]:.4f}", " / ".join(f"{v:+.3f}" for v in p.per_seed[:, i])]
                for i, c in enumerate(savings.counts)]
        text += [f"{sub} {strategy} - {base}: mAP50 difference at each labelled count, paired by seed\n",
                 _table(["Labelled images", "difference ± 95%", "seeds ahead", "std of differences", "per seed"], rows),
                 ""]
    text += [f"{sub} Labels to reach 90% / 95% / 97% of {savings.target_map:.4f} ({savings.target_source}), "
             "mean curves\n",
             _table(["Strategy", "seeds"] + [f"{100 * f:.0f}%" for f in FRACTIONS],
                    [[s, str(savings.n_seeds[s])] + [f"{n:.0f}" if n is not None else
                                                     f"not by {savings.counts[-1]:.0f}" for n in reach]
                     for s, reach in savings.to_reach.items()]), ""]
    last = len(savings.counts) - 1
    rows = []
    for strategy, p in savings.paired.items():
        sd, n = p.diff_sd[last], len(p.seeds)
        rows.append([strategy, f"{sd:.4f}", "n/a" if np.isnan(sd) else f"{Z_POWER * sd / math.sqrt(n):.4f}"]
                    + ["n/a" if np.isnan(sd) else str(seeds_needed(sd, d)) for d in (0.01, 0.02, 0.05)])
    text += [f"{sub} Seeds to resolve a difference (at {savings.counts[last]:.0f} labels: n = (2.8 sd / d)^2, sd "
             "the paired differences' std; a 95% interval then excludes zero 80% of the time)\n",
             _table(["Strategy", "std of differences", "resolved now: d at its seeds",
                     "seeds for d=0.01", "seeds for d=0.02", "seeds for d=0.05"], rows), ""]
    return "\n".join(text)
