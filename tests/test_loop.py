"""Loop pieces that need no training: the stop rules and the take-all selection of the last round."""
from __future__ import annotations

import pytest

from raylib import schemas, storage
from raylib.config import Config, LoopConfig
from raylib.loop import LoopResult, _stop_reason
from raylib.stages import _write_selection_of_all
from tests.helpers import write_manifest


@pytest.mark.parametrize(
    "map50, gain, expected",
    [([0.1, 0.3, 0.5], 0.05, ""), ([0.1, 0.5, 0.51, 0.52], 0.05, "mAP50 gained"), ([0.5, 0.52], 0.05, "")],
)
def test_stop_rule_model_performance(map50, gain, expected):
    cfg = Config(loop=LoopConfig(rounds=10, stop_min_gain=gain, stop_patience=2))
    result = LoopResult(run_root="x", rounds_done=len(map50), map50=map50)
    reason = _stop_reason(cfg, result, len(map50) - 1)
    assert (expected in reason) if expected else reason == ""


def test_stop_after_last_round():
    cfg = Config(loop=LoopConfig(rounds=2))
    assert "2 rounds done" in _stop_reason(cfg, LoopResult("x", 2, [0.1, 0.2]), 1)


def test_last_selection_takes_every_image_left(tmp_path):
    ids = [f"img{i}" for i in range(37)]
    out = str(tmp_path / "selection.parquet")
    assert _write_selection_of_all(write_manifest(str(tmp_path / "pool.parquet"), ids), 4, out) == 37
    table = schemas.check(storage.read_table(out), schemas.SELECTION, "selection")
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids)
    assert set(table.column("class_id").to_pylist()) == {-1} and set(table.column("round").to_pylist()) == {4}
