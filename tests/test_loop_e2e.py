"""The whole loop, as users run it: `jobs/loop.py` with Hydra overrides, as a Ray job and as a command.

The reference is a multirun over two data sets, one of which fails at once (the sweep's failure
isolation), submitted as a Ray job (JobSubmissionClient, the runtime env of infra/runtime_env.yaml) to a
real `ray start --head`: this is where a runtime env that sets an env var `raylib.runtime.init_ray` sends
too would fail (Ray refuses to merge them). It runs issue 13's options through the whole loop: the
IoU-aware objectness, each round trained from the previous round's model, calibration on val. (One
strategy: the strategies and the comparison of several are tested apart, in test_strategies.py and
test_report.py.) A second run of the same config, as a plain command with a local Ray and external
annotators, is SIGKILLed mid-round (the whole process group: driver and its local Ray), started again
with the same command, stops to wait for labels, gets them, and resumes once more. It must end with the
same selections and labels as the reference. (Every loop run costs a minute or two of CI: one run for
the job and the sweep, one for both resumes.)
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from raylib import paths, schemas, storage, tracking
from raylib.formats import voc
from raylib.paths import LABEL_CONFIG_FILE, RoundPaths
from tests.conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY
from tests.helpers import local_ray_head, tensorboard_scalars

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 2  # round 0 selects per class (budget 8), round 1 trains on the grown set from round 0's model
CLASSES = ["circle", "square", "triangle", "star"]  # the synthetic data's
TRAIN_TAGS = ["train/loss_total", "train/loss_iou", "train/loss_conf", "train/loss_cls", "train/loss_l1",
              "train/lr", "train/images_per_s"]


def _command(tmp, run_root: str, *extra: str) -> list[str]:
    flags = [a for a in extra if a.startswith("-")]  # Hydra's flags (-m) go before the overrides
    extra = tuple(a for a in extra if not a.startswith("-"))
    return [sys.executable, os.path.join(ROOT, "jobs", "loop.py"), *flags, "debug=fast", f"loop.rounds={ROUNDS}",
            f"data.root={tmp}/data", f"hydra.run.dir={tmp}/hydra", f"hydra.sweep.dir={tmp}/hydra_multi",
            "cluster.num_cpus=2", "loop.last_round_takes_all=false", "model.iou_aware_obj=true",
            "train.init=previous", "logger=tensorboard", f"run_root={run_root}", *extra]


# Ray's session logs (the head's and the killed run's) go to a short folder of our own (unix socket
# paths are limited to ~100 bytes), so the credentials test can read them too.
RAY_TMP = tempfile.mkdtemp(prefix="rl", dir="/tmp")
ENV = {**os.environ, "RAY_TMPDIR": RAY_TMP}


def _run(args: list[str], log_path: str, timeout: float = 600, cwd=ROOT) -> subprocess.CompletedProcess:
    with open(log_path, "ab") as log:
        return subprocess.run(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              start_new_session=True, env=ENV)


def _rerun(args: list[str], log_path: str, cwd) -> tuple[subprocess.CompletedProcess, str]:
    """Run the command again, appending to its log; returns the run and what this run logged."""
    start = os.path.getsize(log_path)
    done = _run(args, log_path, cwd=cwd)
    with open(log_path) as handle:
        handle.seek(start)
        return done, handle.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`jobs/loop.py -m strategy=cls_iou data=synthetic,voc` as a Ray job: a complete run and a point that
    fails at once (the generated folder has no trainval_2007 image set). Yields (tmp, runs, job log)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    tmp = tmp_path_factory.mktemp("loop")
    runs = tmp / "runs"
    log = str(tmp / "multirun.log")
    with open(os.path.join(ROOT, "infra", "runtime_env.yaml")) as handle:
        runtime_env = yaml.safe_load(handle)
    runtime_env.pop("pip", None)  # the head's Python has those packages and this machine has no index
    runtime_env["working_dir"] = ROOT
    # The region is set by the job's runtime env AND by this process (conftest): init_ray must not send it again.
    assert runtime_env["env_vars"]["AWS_REGION"] and os.environ["AWS_REGION"]
    args = _command(tmp, f"{runs}/${{strategy.name}}_${{data.kind}}", "-m", "strategy=cls_iou", "data=synthetic,voc",
                    "cluster.address=auto")
    with local_ray_head(os.path.join(RAY_TMP, "head")) as address:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=shlex.join(["python", *args[1:]]), runtime_env=runtime_env)
        deadline = time.time() + 600
        while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < deadline, client.get_job_logs(job_id)[-3000:]
            time.sleep(2)  # polling the job's status, not waiting in place of it
        with open(log, "w") as handle:
            handle.write(client.get_job_logs(job_id))
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, open(log).read()[-5000:]
    yield tmp, runs, log
    shutil.rmtree(RAY_TMP, ignore_errors=True)


def _selections(run_root: str) -> list[list[dict]]:
    out = []
    for r in range(ROUNDS - 1):
        table = storage.read_table(RoundPaths(run_root, r).selection)
        out.append(sorted(table.to_pylist(), key=lambda row: (row["image_id"], row["class_id"])))
    return out


def _preannotation_files(folder: str) -> list[str]:
    """The per-image VOC files of an export (not Label Studio's label_config.xml beside them)."""
    return [uri for uri in storage.list_files(folder, ".xml") if os.path.basename(uri) != LABEL_CONFIG_FILE]


def test_loop_job_writes_every_round_output_calibration_and_the_report(reference):
    _, runs, log = reference
    logs = open(log).read()
    assert "[train] epoch 1/1" in logs and "Loop stopped: 2 rounds done" in logs
    # The point's Hydra job log holds what the screen showed, the workers' epoch lines included.
    job_log = open(os.path.join(os.path.dirname(log), "hydra_multi", "0", "loop.log")).read()
    for line in ("[raylib.commit][INFO] - [round 1] train ...", "[raylib.training.train][INFO] - [train] epoch 1/1  loss",
                 "[raylib.loop][INFO] - Loop stopped: 2 rounds done"):
        assert line in job_log, job_log[-3000:]
    run_root = str(runs / "cls_iou_synthetic")
    for r in range(ROUNDS):  # the IoU-aware model of every round, calibrated on val
        summary = json.loads(open(RoundPaths(run_root, r).calibration_summary).read())
        assert summary["split"] == "val" and summary["n_images"] > 0
        assert os.path.exists(RoundPaths(run_root, r).calibration)
    assert "## Calibration" in open(paths.report_file(paths.report_dir(run_root))).read()
    pool_size = storage.read_table(paths.pool_manifest(run_root)).num_rows
    for r in range(ROUNDS):
        rp = RoundPaths(run_root, r)
        assert storage.exists(rp.metrics) and storage.exists(rp.weights)
        if r == ROUNDS - 1:
            break
        status = storage.read_table(rp.image_status)
        unlabelled = storage.read_table(rp.unlabelled).num_rows
        assert status.num_rows == unlabelled  # one status row per pool image
        selection = schemas.check(storage.read_table(rp.selection), schemas.SELECTION, "selection")
        selected = set(selection.column("image_id").to_pylist())
        assert selected
        xml_files = _preannotation_files(rp.preannotations)
        assert len(xml_files) == len(selected)
        for uri in xml_files[:5]:
            voc.read_voc(uri)  # parses, boxes valid
        labels = storage.read_table(rp.labels)
        assert selected <= set(labels.column("image_id").to_pylist())
    # Round 0's labels are the seed set plus the selection (debug=fast: a budget of 8 images; fewer when the
    # untrained model's lowest scores of every class fall on fewer images: seen, 1 image).
    seed_size = storage.read_table(paths.seed_labels(run_root)).num_rows
    round0_selected = set(storage.read_table(RoundPaths(run_root, 0).selection).column("image_id").to_pylist())
    assert 1 <= len(round0_selected) <= 8
    assert storage.read_table(RoundPaths(run_root, 0).labels).num_rows == seed_size + len(round0_selected) < pool_size
    report_dir = paths.report_dir(run_root)
    assert "figure 6.8" in open(paths.report_file(report_dir)).read()
    for png in ("splits", "thresholds", "ap50", "objects", "map50"):
        assert os.path.getsize(os.path.join(report_dir, f"{png}.png")) > 1000


def test_tensorboard_has_every_epoch_and_round(reference):
    """`logger=tensorboard`: per-epoch scalars from training's rank 0 and per-round scalars from the
    driver, as TensorBoard's own reader reads them back."""
    _, runs, _ = reference
    run_root = str(runs / "cls_iou_synthetic")
    log_dir = os.path.join(run_root, "tensorboard")
    train = tensorboard_scalars(os.path.join(log_dir, tracking.TRAIN_RUN))
    assert sorted(train) == sorted(TRAIN_TAGS)
    assert all([step for step, _ in train[tag]] == [1, 2] for tag in TRAIN_TAGS)  # round_idx * epochs + epoch
    assert all(math.isfinite(value) for tag in TRAIN_TAGS for _, value in train[tag])
    rounds = tensorboard_scalars(os.path.join(log_dir, tracking.ROUND_RUN))
    metrics = [json.loads(storage.read_text(RoundPaths(run_root, r).metrics)) for r in range(ROUNDS)]
    assert rounds["round/map50"] == [(r, pytest.approx(metrics[r]["map50"])) for r in range(ROUNDS)]
    trained_on = [paths.seed_labels(run_root), RoundPaths(run_root, 0).labels]
    assert rounds["round/labelled_images"] == [(r, storage.read_table(trained_on[r]).num_rows) for r in range(ROUNDS)]
    for name in CLASSES:
        finite = [r for r in range(ROUNDS) if math.isfinite(metrics[r]["ap50_per_class"][name])]
        assert [step for step, _ in rounds.get(f"round/ap50/{name}", [])] == finite
    # Round 0's per-class selection is what round 1 added: logged at step 1.
    selected = storage.read_table(RoundPaths(run_root, 0).selection).column("image_id").unique()
    assert rounds["round/selected_images"] == [(1, len(selected))]
    assert all(len(rounds[f"round/selected_images/{name}"]) == 1 for name in CLASSES)
    assert any(tag.startswith("round/threshold/") for tag in rounds)


def test_multirun_isolates_a_failed_point_and_compares_the_runs(reference):
    tmp, runs, _ = reference
    failed = (tmp / "hydra_multi" / "failed_points.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith("sweep point [") and "data=voc" in failed[0]
    assert "PoolError" in failed[0] and "trainval_2007" in failed[0]
    text = open(runs / "comparison" / "comparison.md").read()
    assert "| cls_iou |" in text
    assert os.path.getsize(runs / "comparison" / "comparison.png") > 1000


def test_sigkilled_run_resumes_waits_for_annotators_and_ends_like_the_reference(reference):
    """`loop.oracle=external`, SIGKILLed while scoring round 0. The same command resumes at the score
    stage, exports round 0's pre-annotations and stops: nothing to ingest yet. Annotators deliver
    corrected XML (the ground truth); the same command resumes at the oracle stage and ends with the
    selections and labels of the simulated-oracle reference."""
    tmp, runs, _ = reference
    run_root = str(tmp / "killed" / "cls_iou_synthetic")
    labels_in = tmp / "corrected"
    log = str(tmp / "killed.log")
    # A relative run_root, given from another directory as `./run.sh` users give it: Ray Train workers
    # run elsewhere, so this fails unless the config makes local paths absolute.
    args = _command(tmp, "killed/cls_iou_synthetic", "strategy=cls_iou", "loop.oracle=external",
                    f"loop.labels_in={labels_in}")
    round0 = RoundPaths(run_root, 0)
    # score_pool creates scored/ before its actors start (seconds of model loading and scoring on 2
    # cores), so killing when it appears lands inside the score stage, with its marker not yet written.
    with open(log, "ab") as out:
        process = subprocess.Popen(args, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=ENV)
        deadline = time.monotonic() + 600
        while not os.path.exists(round0.scored) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the condition itself, not sleeping in place of it
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert os.path.exists(round0.marker("unlabelled")) and not os.path.exists(round0.marker("score"))

    resumed, resumed_log = _rerun(args, log, cwd=tmp)
    assert resumed.returncode == 0, resumed_log[-5000:]
    assert "round 0: evaluate already committed, skipping" in resumed_log
    assert "[round 0] train ..." not in resumed_log and "[round 0] score ..." in resumed_log
    assert "waiting for labels: 0 of" in resumed_log
    # Ray's notes, not the run's (the last: Ray's C++ core worker about the scoring actors, raylib.console)
    notices = ("Token authentication is enabled", "Progress bars disabled", "constructor arguments in the object store")
    for notice in notices:
        assert notice not in resumed_log
    assert os.path.exists(round0.marker("export")) and not os.path.exists(round0.marker("oracle"))
    assert not os.path.exists(RoundPaths(run_root, 1).root)

    delivered = 0
    for uri in _preannotation_files(round0.preannotations):
        image_id = os.path.relpath(uri, round0.preannotations)[: -len(".xml")]
        storage.write_bytes(str(labels_in / "Annotations" / f"{image_id}.xml"),
                            storage.read_bytes(str(tmp / "data" / "Annotations" / f"{image_id}.xml")))
        delivered += 1
    assert delivered > 0
    second, labelled_log = _rerun(args, log, cwd=tmp)
    assert second.returncode == 0, labelled_log[-5000:]
    assert "round 0: export already committed, skipping" in labelled_log and "[round 0] oracle ..." in labelled_log
    assert os.path.exists(RoundPaths(run_root, 1).metrics)

    reference_root = str(runs / "cls_iou_synthetic")
    assert _selections(run_root) == _selections(reference_root)
    for r in range(ROUNDS - 1):
        ours = storage.read_table(RoundPaths(run_root, r).labels).sort_by("image_id")
        theirs = storage.read_table(RoundPaths(reference_root, r).labels).sort_by("image_id")
        assert ours.equals(theirs)
    # Killed once and resumed twice, the run logged its committed rounds and epochs again: each point
    # was replaced, not doubled.
    for run in (tracking.TRAIN_RUN, tracking.ROUND_RUN):
        ours = tensorboard_scalars(os.path.join(run_root, "tensorboard", run))
        theirs = tensorboard_scalars(os.path.join(reference_root, "tensorboard", run))
        assert {tag: [step for step, _ in points] for tag, points in ours.items()} == \
            {tag: [step for step, _ in points] for tag, points in theirs.items()}


def test_credentials_never_reach_outputs_or_logs(reference):
    """The runs above had fake AWS keys in their environment; no output, log or report may hold them."""
    tmp, _, _ = reference
    leaks = []
    checked = 0
    for folder, _, files in [*os.walk(tmp), *os.walk(RAY_TMP)]:
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue  # sockets and pipes of the Ray session
            checked += 1
            with open(path, "rb") as handle:
                data = handle.read()
            if FAKE_SECRET_KEY.encode() in data or FAKE_ACCESS_KEY.encode() in data:
                leaks.append(path)
    assert checked > 50  # outputs, Hydra logs, our logs and Ray's session logs were all read
    assert not leaks, leaks
