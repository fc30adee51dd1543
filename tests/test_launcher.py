"""`hydra/launcher=ray_jobs` (hydra_plugins/raylib_launcher) against a real `ray start --head`.

A sweep of `jobs/status.py` (no Ray work, about two seconds a point) over three run roots: two that
answer and one whose stored config is broken, so its job fails. Each point must be a Ray job of its own
on the head, the two good ones running at the same time, the failed one listed in failed_points.txt,
and the sweep must end (non-zero: a point failed) after the comparison job.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from hydra_plugins.raylib_launcher.ray_jobs_launcher import _hydra_value, _last_error, _wrong_interpreter
from raylib import paths
from tests.helpers import local_ray_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python` in the jobs' entrypoints is this venv's; the head has no token auth (tests.helpers.local_ray_head).
ENV = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}


def test_a_failed_points_reason_is_the_last_error_line_of_its_log():
    traceback = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nyaml.parser.ParserError: while parsing\n"
                 "  in line 1\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n")
    assert _last_error(traceback) == "yaml.parser.ParserError: while parsing"
    assert _last_error("loading\nerror: round_idx must be >= 0\n") == "error: round_idx must be >= 0"
    assert _last_error("killed\n") == "killed" and _last_error("") == ""


def test_a_job_dir_with_a_comma_or_quote_stays_one_hydra_value():
    assert _hydra_value("outputs/hydra/multirun_2026-12-03_10-00-00/0") == "outputs/hydra/multirun_2026-12-03_10-00-00/0"
    assert _hydra_value("/tmp/a b,c'd") == "'/tmp/a b,c\\'d'"


def test_a_point_whose_interpreter_lacks_the_project_names_it_and_the_fix():
    ran = "[ray_jobs] interpreter: /opt/py/bin/python3\nTraceback (most recent call last):\n  File \"jobs/loop.py\"\n" \
          "ModuleNotFoundError: No module named 'hydra'\n"
    assert _wrong_interpreter(ran, "python").startswith(
        "; the point ran /opt/py/bin/python3 (hydra.launcher.python=python), which lacks the project (or a dependency): "
        f"set hydra.launcher.python to the nodes' interpreter that has it (on this machine: hydra.launcher.python={sys.executable})")
    assert "ran '/no/python' (not found on the node) (hydra.launcher.python=/no/python)" in _wrong_interpreter("/bin/sh: 1: /no/python: not found\n", "/no/python")
    # Any other failure, after the interpreter started, is its own error.
    assert _wrong_interpreter("[ray_jobs] interpreter: /v/bin/python\nFileNotFoundError: No such file or directory: 'x'\n", "python") == ""


@pytest.mark.slow
def test_each_point_is_its_own_ray_job_and_a_failed_point_is_listed(tmp_path):
    from ray.job_submission import JobSubmissionClient

    runs, sweep = tmp_path / "runs", tmp_path / "sweep"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / paths.RUN_CONFIG_FILE).write_text("a: [unclosed\n")  # status fails reading it
    ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # unix socket paths are limited to ~100 bytes
    try:
        with local_ray_head(os.path.join(ray_tmp, "head")) as address:
            sweep_run = subprocess.run(
                [sys.executable, "jobs/status.py", "-m", "hydra/launcher=ray_jobs", f"hydra.launcher.address={address}",
                 "hydra.launcher.poll_s=0.5", f"hydra.sweep.dir={sweep}", f"run_root={runs}/a,{runs}/b,{runs}/broken"],
                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
            jobs = JobSubmissionClient(address).list_jobs()
            # A cluster whose `python` is another interpreter (here a bare venv: no hydra, no project).
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "foreign")], check=True)
            foreign = tmp_path / "foreign" / "bin" / "python"
            wrong = subprocess.run(
                [sys.executable, "jobs/status.py", "-m", "hydra/launcher=ray_jobs", f"hydra.launcher.address={address}",
                 f"hydra.launcher.python={foreign}", "hydra.launcher.poll_s=0.5", f"hydra.sweep.dir={tmp_path}/sweep2",
                 f"run_root={runs}/a"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = sweep_run.stdout + sweep_run.stderr
    assert sweep_run.returncode != 0, out  # a point failed: the sweep says so, after running them all

    points = {job.metadata["overrides"]: job for job in jobs if "hydra_job_num" in job.metadata}
    a, b, broken = points[f"run_root={runs}/a"], points[f"run_root={runs}/b"], points[f"run_root={runs}/broken"]
    assert len({job.submission_id for job in (a, b, broken)}) == 3, out
    assert a.status == b.status == "SUCCEEDED" and broken.status == "FAILED", out
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two points did not overlap"
    assert "cluster.address=auto" in a.entrypoint and "hydra/launcher" not in a.entrypoint
    for job in (a, b, broken):  # one status line per change, the last one terminal
        assert f"{job.submission_id}: {job.status.value}" in out, out

    failed = (sweep / "failed_points.txt").read_text().splitlines()
    assert len(failed) == 1 and f"[run_root={runs}/broken]" in failed[0] and "ParserError" in failed[0], failed
    assert "2 of 3 point(s) succeeded; 1 failed" in out, out
    # Each point's job log beside the sweep; the comparison ran on the head after the points.
    assert "no run here yet" in (sweep / a.metadata["hydra_job_num"] / "ray_job.log").read_text()
    comparison = [job for job in jobs if job.metadata.get("comparison") == str(runs)]
    assert len(comparison) == 1 and comparison[0].status == "SUCCEEDED", out
    assert comparison[0].start_time >= max(job.end_time for job in points.values())
    assert f"comparison SUCCEEDED: comparison: no finished runs under {runs}" in out, out

    # The wrong interpreter's point: one line naming the interpreter that ran and the setting that fixes it.
    failed = [line for line in wrong.stdout.splitlines() if line.startswith("[ray_jobs] sweep point")]
    assert wrong.returncode != 0 and len(failed) == 1, wrong.stdout + wrong.stderr
    assert failed[0].endswith(
        f"FAILED: ModuleNotFoundError: No module named 'hydra'; the point ran {foreign} (hydra.launcher.python="
        f"{foreign}), which lacks the project (or a dependency): set hydra.launcher.python to the nodes' interpreter "
        f"that has it (on this machine: hydra.launcher.python={sys.executable}), or start the cluster from the "
        "project's image (infra/Dockerfile)"), failed[0]
