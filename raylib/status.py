"""Where a run stands, from its files only (no Ray): each round's stages with their durations, mAP50
per round, and what is pending. Read by `jobs/status.py`; the stage markers (raylib/commit.py) hold
each stage's summary and seconds."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from raylib import paths, storage
from raylib.paths import RoundPaths
from raylib.commit import LAST_ROUND_STAGES, STAGES


@dataclass
class RoundStatus:
    round_idx: int
    seconds: dict[str, float] = field(default_factory=dict)  # committed stages only
    map50: float | None = None
    pending: list[str] = field(default_factory=list)


def run_status(run_root: str) -> tuple[dict, list[RoundStatus]]:
    """The stored config (as a dict; empty if the run never started) and one status per round."""
    config_uri = paths.run_config(run_root)
    config = OmegaConf.to_container(OmegaConf.create(storage.read_text(config_uri))) if storage.exists(config_uri) else {}
    rounds = int(config.get("loop", {}).get("rounds", 0))
    while storage.exists(RoundPaths(run_root, rounds).root):  # rounds made before a change of loop.rounds
        rounds += 1
    statuses = []
    for round_idx in range(rounds):
        rp = RoundPaths(run_root, round_idx)
        status = RoundStatus(round_idx)
        for stage in LAST_ROUND_STAGES if round_idx == rounds - 1 else STAGES:
            marker = rp.marker(stage)
            if not storage.exists(marker):
                status.pending.append(stage)
                continue
            summary = json.loads(storage.read_text(marker))
            status.seconds[stage] = float(summary.get("seconds", 0.0))
            if stage == "evaluate":
                status.map50 = summary.get("map50")
        statuses.append(status)
    return config, statuses


def format_status(run_root: str, config: dict, statuses: list[RoundStatus]) -> str:
    """A table: one row per round, a column per stage (seconds, `-` pending), mAP50; then what's next."""
    if not config:
        return f"{run_root}: no run here yet ({paths.RUN_CONFIG_FILE} missing): start it with jobs/loop.py run_root={run_root}"
    what = (f"{config['data']['kind']} data, YOLOX-{config['model']['size']} at {config['model']['input_size']}, "
            f"strategy {config['strategy']['name']} (k={config['strategy']['k']}), seed {config['seed']}, "
            f"{config['loop']['rounds']} rounds")
    lines = [f"{run_root}: {what}", "round " + "".join(f"{stage:>11}" for stage in STAGES) + "      mAP50"]
    for status in statuses:
        cells = []
        for stage in STAGES:
            if stage in status.seconds:
                cells.append(f"{_duration(status.seconds[stage]):>11}")
            else:
                cells.append(f"{'-' if stage in status.pending else '':>11}")
        map50 = "" if status.map50 is None else f"{status.map50:.4f}"
        lines.append(f"{status.round_idx:>5} " + "".join(cells) + f"{map50:>11}")
    pending = [(s.round_idx, stage) for s in statuses for stage in s.pending]
    total = sum(sum(s.seconds.values()) for s in statuses)
    if pending:
        round_idx, stage = pending[0]
        lines.append(f"pending: {len(pending)} stage(s), next: round {round_idx} {stage}; "
                     f"{_duration(total)} of stages done")
    else:
        lines.append(f"done: every stage committed, {_duration(total)} in all")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
