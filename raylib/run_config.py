"""A run knows its config: the resolved config is written into the run root when the run starts, and a
rerun into the same run root is compared with it.

Identical -> resume. Keys fall in three kinds:
- where and how fast it runs (`EXECUTION_KEYS`: cluster, storage, actor and worker resources): a rerun
  may change them; the difference is printed and the run resumes;
- what may change between rounds (`BETWEEN_ROUNDS_KEYS`: more rounds, the next round's budget,
  annotators instead of the simulation, more GPUs): refused unless the rerun says `accept_new_values=true`,
  which records the change in `config_changes.json` and makes the new values the stored ones;
- everything else defines the run (data, model, strategy, seed, the training recipe): refused; the
  way out is another `run_root`.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from omegaconf import OmegaConf

from raylib import paths, storage
from raylib.config import Config, ConfigError

log = logging.getLogger(__name__)

NOT_COMPARED = ("run_root", "round_idx", "accept_new_values")
EXECUTION_KEYS = (
    "cluster.", "storage.", "eval.", "logger.", "loop.labelstudio.",
    "score.batch_size", "score.num_actors", "score.num_cpus_per_actor", "score.num_gpus_per_actor",
    "score.decode_num_cpus", "score.torch_threads", "score.rows_per_file", "score.concurrent_batches",
    "train.cpus_per_worker", "train.num_loader_workers", "train.max_failures", "train.val_batch_size",
    "train.torch_threads",
)
BETWEEN_ROUNDS_KEYS = (
    "loop.rounds", "strategy.budget", "loop.oracle", "loop.labels_in", "loop.labels_format",
    "loop.accept_partial_delivery", "loop.labelstudio_document_root", "loop.stop_min_gain", "loop.stop_patience",
    "train.num_workers", "train.use_gpu", "train.amp", "score.fp16", "score.channels_last", "score.device_decode",
)


class RunConfigMismatch(ConfigError):
    """A rerun's config differs from the one stored in its run root in keys that change results."""


def flatten(cfg: Config | dict) -> dict[str, Any]:
    """`{"strategy.k": 100, ...}`: the config as dotted keys (tuples as lists, as YAML stores them)."""
    tree = cfg if isinstance(cfg, dict) else OmegaConf.to_container(OmegaConf.structured(cfg))

    def walk(node: dict, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out.update(walk(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    return walk(tree, "")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def key_kind(key: str) -> str:
    """ignored | execution | between_rounds | run (see the module docstring)."""
    if key in NOT_COMPARED:
        return "ignored"
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in EXECUTION_KEYS):
        return "execution"
    return "between_rounds" if key in BETWEEN_ROUNDS_KEYS else "run"


def diff(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs: {key: (stored, new)}. A key the stored config lacks (added to the
    schema since) counts as unchanged when the new value is the schema's default."""
    defaults = _defaults()
    changed = {}
    for key, value in new.items():
        if key_kind(key) == "ignored":
            continue
        if key not in stored:
            if key in defaults and defaults[key] == value:
                continue
            changed[key] = ("(absent)", value)
        elif stored[key] != value:
            changed[key] = (stored[key], value)
    return changed


def _defaults() -> dict[str, Any]:
    return flatten(OmegaConf.to_container(OmegaConf.structured(Config)))


def check_run_config(cfg: Config) -> None:
    """Store `cfg` in a new run root, or compare it with the stored one (see the module docstring).

    Raises RunConfigMismatch with one line per differing key and the ways out."""
    uri = paths.run_config(cfg.run_root)
    if not storage.exists(uri):
        storage.write_text(uri, to_yaml(cfg))
        return
    stored = flatten(OmegaConf.to_container(OmegaConf.create(storage.read_text(uri))))
    changed = diff(stored, flatten(cfg))
    if not changed:
        return
    by_kind: dict[str, dict] = {"execution": {}, "between_rounds": {}, "run": {}}
    for key, values in changed.items():
        by_kind[key_kind(key)][key] = values
    lines = [f"  {key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items())]
    where = f"run_root {cfg.run_root} holds a run started with another config ({uri}):"
    if by_kind["run"]:
        raise RunConfigMismatch("\n".join([where, *lines, (
            f"{', '.join(sorted(by_kind['run']))} define(s) the run and can't change in it: start another run with "
            "run_root=<another folder> (the default run_root names data, model, strategy and seed)")]))
    if by_kind["between_rounds"] and not cfg.accept_new_values:
        raise RunConfigMismatch("\n".join([where, *lines, (
            "either start another run with run_root=<another folder>, or continue this one with the new values "
            "from its next stage on: add accept_new_values=true")]))
    if by_kind["between_rounds"]:
        _record_changes(cfg, by_kind["between_rounds"])
        storage.write_text(uri, to_yaml(cfg))
        log.info(f"continuing {cfg.run_root} with new values (recorded in {paths.config_changes(cfg.run_root)}):\n"
                 + "\n".join(lines))
    else:
        log.info("resuming with other execution settings (results unchanged):\n" + "\n".join(lines))


def _record_changes(cfg: Config, changes: dict[str, tuple[Any, Any]]) -> None:
    uri = paths.config_changes(cfg.run_root)
    history = json.loads(storage.read_text(uri)) if storage.exists(uri) else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}})
    storage.write_text(uri, json.dumps(history, indent=1, default=str))
