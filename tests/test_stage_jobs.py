"""A stage job run alone is the loop's stage: same files, same values.

One small loop run (2 rounds: round 0 takes every image left, the seed's last selection; round 1 only
trains; round 0 starts from `model.weights`, round 1 from round 0's model) is copied once per
stage; in the copy the stage's outputs of one round are removed and `jobs/<stage>.py round_idx=N` is run
as a user runs it. What it writes must equal what the loop wrote. Each job is a process of its own with
its own local Ray, as the loop was.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from raylib import model, storage
from raylib.paths import COCO_FILE, LABELSTUDIO_FILE, RoundPaths

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["circle", "square", "triangle", "star"]  # the synthetic data's


def _overrides(tmp, run_root: str, weights: str) -> list[str]:
    return ["debug=fast", "loop.rounds=2", f"data.root={tmp}/data", f"hydra.run.dir={tmp}/hydra",
            "cluster.num_cpus=2", "train.init=previous", f"model.weights={weights}", f"run_root={run_root}"]


def _job(name: str, tmp, run_root: str, weights: str, *extra: str) -> str:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", f"{name}.py"),
                           *_overrides(tmp, run_root, weights), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """The loop's run root; (tmp, run_root, start weights)."""
    tmp = tmp_path_factory.mktemp("stages")
    weights = str(tmp / "start.pt")
    torch.manual_seed(0)
    torch.save(model.build_model("nano", len(CLASSES)).state_dict(), weights)
    run_root = str(tmp / "runs" / "loop")
    out = _job("loop", tmp, run_root, weights)
    assert "Loop stopped: 2 rounds done" in out
    return tmp, run_root, weights


def _alone(loop_run, name: str, round_idx: int, remove: list[str], *extra: str) -> tuple[RoundPaths, RoundPaths]:
    """Copy the loop's run, remove `remove` (attributes of the round's RoundPaths), run jobs/`name`.py
    alone on the copy; returns (the loop's round paths, the copy's)."""
    tmp, run_root, weights = loop_run
    copy = str(tmp / "runs" / f"alone_{name}_{round_idx}")
    shutil.copytree(run_root, copy)
    alone = RoundPaths(copy, round_idx)
    for attr in remove:
        storage.delete(getattr(alone, attr))
        assert not storage.exists(getattr(alone, attr))
    _job(name, tmp, copy, weights, f"round_idx={round_idx}", *extra)
    return RoundPaths(run_root, round_idx), alone


def _table(uri: str, sort_by: list[str]) -> pa.Table:
    return storage.read_table(uri).sort_by([(column, "ascending") for column in sort_by])


def _state(uri: str) -> dict:
    """The tensors of a weights file: ours ({"model": state, ...}) or a plain state dict (the start weights)."""
    payload = torch.load(uri, map_location="cpu", weights_only=True)
    return payload.get("model", payload)


def _assert_same_weights(a: str, b: str) -> None:
    first, second = _state(a), _state(b)
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# Round 1, from the round before (train.init=previous), its job on another machine's shape: 2 CPUs per
# worker and a loader process, with train.torch_threads pinned to the loop's 1 thread (without it, the 2
# threads' float sums round differently and every tensor differs). Round 0's job (from model.weights) is
# not run alone: the same stages.train picks the start weights, and each Ray Train run costs CI ~85 s.
RESHAPED = ("cluster.num_cpus=3", "train.cpus_per_worker=2", "train.num_loader_workers=1", "train.torch_threads=1")


def test_train_job_trains_the_loops_model(loop_run):
    loop, alone = _alone(loop_run, "train", 1, ["checkpoint"], *RESHAPED)
    _assert_same_weights(loop.weights, alone.weights)
    # Not round 0's weights it started from: the round trained (a job that trained nothing differs).
    start = RoundPaths(loop_run[1], 0).weights
    assert any(not torch.equal(v, _state(start)[k]) for k, v in _state(alone.weights).items())


def test_evaluate_job_writes_all_four_outputs_of_the_loop(loop_run):
    outputs = ["metrics", "metrics_test", "calibration", "calibration_summary"]
    loop, alone = _alone(loop_run, "evaluate", 1, outputs)
    for name in ("metrics", "metrics_test", "calibration_summary"):
        ours, theirs = (json.loads(storage.read_text(getattr(rp, name))) for rp in (loop, alone))
        ours.pop("weights", None), theirs.pop("weights", None)  # the copy's own path
        assert ours == theirs, name
    assert _table(loop.calibration, ["bin_lo"]).equals(_table(alone.calibration, ["bin_lo"]))


def test_score_job_scores_with_the_rounds_model_not_model_weights(loop_run):
    # model.weights is set (the start weights): the job must still score with round 0's trained model. With
    # two torch threads and batches of 3 (the loop had one thread, 16): the same rows. (Rows whoever
    # scored them, with two actors: test_score's rerun test.)
    loop, alone = _alone(loop_run, "score", 0, ["detections", "image_status"], "score.torch_threads=2",
                         "score.batch_size=3")
    keys = ["image_id", "class_id", "score"]
    assert storage.read_table(loop.detections).num_rows > 0
    assert _table(loop.detections, keys).equals(_table(alone.detections, keys))
    assert _table(loop.image_status, ["image_id"]).equals(_table(alone.image_status, ["image_id"]))


def test_select_job_takes_every_image_left_as_the_loop_did(loop_run):
    # Round 0 is the last selection: the seed's take-all (the job once had no such path). The per-class
    # selection is the same function for both (stages.select): tests/test_select.py.
    loop, alone = _alone(loop_run, "select_images", 0, ["selection", "thresholds"])
    selection = _table(loop.selection, ["image_id", "class_id"])
    assert selection.equals(_table(alone.selection, ["image_id", "class_id"]))
    assert _table(loop.thresholds, ["class_id"]).equals(_table(alone.thresholds, ["class_id"]))
    assert selection.num_rows == storage.read_table(loop.unlabelled).num_rows
    assert set(selection.column("class_id").to_pylist()) == {-1}


def _without_time(text: str) -> str:
    return re.sub(r"<analysis_time>[^<]*</analysis_time>|\"date_created\": \"[^\"]*\"", "", text)


def test_export_job_writes_the_loops_preannotations(loop_run):
    loop, alone = _alone(loop_run, "export", 0, ["preannotations"])
    ours = sorted(os.path.relpath(uri, loop.preannotations) for uri in storage.list_files(loop.preannotations))
    theirs = sorted(os.path.relpath(uri, alone.preannotations) for uri in storage.list_files(alone.preannotations))
    assert ours == theirs and any(name.endswith(".xml") for name in ours)
    for name in ours:
        if name.endswith((".xml", ".json", ".txt")):
            text = [storage.read_text(storage.join(rp.preannotations, name)) for rp in (loop, alone)]
            if name == LABELSTUDIO_FILE or name == COCO_FILE or name.endswith(".xml"):
                text = [_without_time(t) for t in text]
            assert text[0] == text[1], name
