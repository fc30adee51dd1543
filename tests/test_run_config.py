"""A run knows its config: stored at the start, an identical rerun resumes, a rerun with other
result-relevant values is refused with one line per key and the ways out."""
from __future__ import annotations

import json
import logging
import os

import pytest
import yaml

from raylib import paths, storage
from raylib.config import ClusterConfig, Config, LoopConfig, StrategyConfig, TrainConfig
from raylib.loop import run_loop
from raylib.run_config import RunConfigMismatch, check_run_config


def _cfg(run_root, **slices) -> Config:
    return Config(run_root=str(run_root), **slices)


def test_first_run_stores_the_resolved_config(tmp_path):
    check_run_config(_cfg(tmp_path, strategy=StrategyConfig(k=7)))
    with open(tmp_path / "config.yaml") as handle:
        stored = yaml.safe_load(handle)
    assert stored["strategy"]["k"] == 7 and stored["model"]["size"] == "s" and stored["run_root"] == str(tmp_path)


def test_identical_rerun_resumes_silently(tmp_path, caplog):
    check_run_config(_cfg(tmp_path))
    before = (tmp_path / "config.yaml").read_text()
    with caplog.at_level(logging.INFO, logger="raylib"):
        check_run_config(_cfg(tmp_path))
    assert caplog.text == "" and (tmp_path / "config.yaml").read_text() == before


def test_a_changed_run_key_is_refused_with_one_line_per_key(tmp_path):
    check_run_config(_cfg(tmp_path))
    changed = _cfg(tmp_path, strategy=StrategyConfig(k=10, min_score=0.05), train=TrainConfig(epochs=20, no_aug_epochs=5))
    with pytest.raises(RunConfigMismatch) as refused:
        check_run_config(changed)
    lines = str(refused.value).splitlines()
    assert "  strategy.k: 100 -> 10" in lines and "  strategy.min_score: 0.2 -> 0.05" in lines
    assert "  train.epochs: 300 -> 20" in lines and "  train.no_aug_epochs: 15 -> 5" in lines
    assert len(lines) == 1 + 4 + 1 and "run_root=<another folder>" in lines[-1]
    # accept_new_values covers only keys that may change between rounds
    changed.accept_new_values = True
    with pytest.raises(RunConfigMismatch, match="define"):
        check_run_config(changed)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["strategy"]["k"] == 100


def test_more_rounds_need_accept_new_values_and_are_recorded(tmp_path):
    check_run_config(_cfg(tmp_path, loop=LoopConfig(rounds=4, seed_size=60)))
    more = _cfg(tmp_path, loop=LoopConfig(rounds=6, seed_size=60))
    with pytest.raises(RunConfigMismatch) as refused:
        check_run_config(more)
    assert "  loop.rounds: 4 -> 6" in str(refused.value).splitlines()
    assert "accept_new_values=true" in str(refused.value) and "run_root=<another folder>" in str(refused.value)

    more.accept_new_values = True
    check_run_config(more)
    history = json.loads((tmp_path / "config_changes.json").read_text())
    assert [entry["changes"] for entry in history] == [{"loop.rounds": {"old": 4, "new": 6}}]
    # The new values are the run's now: the same rerun without the flag resumes.
    check_run_config(_cfg(tmp_path, loop=LoopConfig(rounds=6, seed_size=60)))


def test_the_next_rounds_budget_may_change_with_accept_new_values(tmp_path):
    # A team labels what its annotators can this round: 60 images, then 100 (benchmarks/label_efficiency.py
    # --pool trap grows each round's budget this way).
    check_run_config(_cfg(tmp_path, strategy=StrategyConfig(budget=60)))
    bigger = _cfg(tmp_path, strategy=StrategyConfig(budget=100))
    with pytest.raises(RunConfigMismatch, match="accept_new_values=true"):
        check_run_config(bigger)
    bigger.accept_new_values = True
    check_run_config(bigger)
    history = json.loads((tmp_path / "config_changes.json").read_text())
    assert [entry["changes"] for entry in history] == [{"strategy.budget": {"old": 60, "new": 100}}]


def test_execution_settings_may_change(tmp_path, caplog):
    check_run_config(_cfg(tmp_path))
    with caplog.at_level(logging.INFO, logger="raylib"):
        check_run_config(_cfg(tmp_path, cluster=ClusterConfig(num_cpus=2)))
    assert "cluster.num_cpus: None -> 2" in caplog.text


def test_a_key_added_to_the_schema_since_counts_as_its_default(tmp_path):
    check_run_config(_cfg(tmp_path))
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del stored["train"]["warmup_lr"]  # a run stored before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    check_run_config(_cfg(tmp_path))
    with pytest.raises(RunConfigMismatch, match=r"train\.warmup_lr: '\(absent\)' -> 0\.1"):
        check_run_config(_cfg(tmp_path, train=TrainConfig(warmup_lr=0.1)))


def test_the_loop_refuses_before_doing_anything(tmp_path):
    run_root = tmp_path / "run"
    check_run_config(_cfg(run_root))
    with pytest.raises(RunConfigMismatch, match="seed: 0 -> 1"):
        run_loop(_cfg(run_root, seed=1))
    assert sorted(os.listdir(run_root)) == [paths.RUN_CONFIG_FILE]
    assert storage.exists(paths.run_config(str(run_root)))
