"""The cluster path, locally: a real Ray head (`ray start --head`, free ports, a temp dir of its own)
and `jobs/loop.py debug=fast` submitted to it through JobSubmissionClient, with the runtime env of
infra/runtime_env.yaml (parsed, not copied; its pip list is left out: the head's Python has those
packages and this machine has no index). The job must succeed: this is where a runtime env that sets
an env var `raylib.runtime.init_ray` sends too would fail (Ray refuses to merge them)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from raylib.paths import RoundPaths

pytestmark = pytest.mark.slow  # a head, a job driver, two debug=fast rounds: ~2 min on 2 cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def local_head():
    """A head of our own, started with --block in its own session; killed (its process group) after."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: unix socket paths are limited
    gcs, dashboard, client, agent = _free_ports(4)
    # 2.60 heads default to token auth, and this process's Ray read its (disabled) auth mode at import:
    # a head on 127.0.0.1 only, without auth. `python` in the entrypoint is this venv's.
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block", f"--port={gcs}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:  # the dashboard answers once the head is up
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except AuthenticationError:
            os.killpg(head.pid, signal.SIGKILL)
            raise
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                raise
            time.sleep(1)
    try:
        yield JobSubmissionClient(address)
    finally:
        # SIGKILL, not SIGTERM: the head's graceful stop took 30 s of CI; nothing of this throwaway head
        # (its own session, its own temp dir, removed here) needs to be saved.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_loop_job_submitted_with_the_infra_runtime_env_succeeds(local_head, tmp_path):
    from ray.job_submission import JobStatus

    with open(os.path.join(ROOT, "infra", "runtime_env.yaml")) as handle:
        runtime_env = yaml.safe_load(handle)
    runtime_env.pop("pip")
    runtime_env["working_dir"] = ROOT
    # The region is set by the job's runtime env AND by this process (conftest): init_ray must not send it again.
    assert runtime_env["env_vars"]["AWS_REGION"] and os.environ["AWS_REGION"]
    # Also issue 13's options through the whole loop (one loop run serves both: CI time): the IoU-aware
    # objectness, trained from the previous round's model, two rounds, each with its calibration on val.
    job_id = local_head.submit_job(
        entrypoint=(f"python jobs/loop.py debug=fast cluster.address=auto loop.rounds=2 run_root={tmp_path}/run "
                    f"data.root={tmp_path}/data hydra.run.dir={tmp_path}/hydra loop.last_round_takes_all=false "
                    "model.iou_aware_obj=true train.init=previous"),
        runtime_env=runtime_env)
    deadline = time.time() + 540
    while local_head.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, local_head.get_job_logs(job_id)[-3000:]
        time.sleep(2)
    logs = local_head.get_job_logs(job_id)
    assert local_head.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-5000:]
    assert "[train] epoch 1/1" in logs and "Loop stopped: 2 rounds done" in logs
    run_root = os.path.join(tmp_path, "run")
    assert os.path.exists(os.path.join(run_root, "config.yaml"))
    for r in range(2):
        rp = RoundPaths(run_root, r)
        assert os.path.exists(rp.marker("evaluate"))
        summary = json.loads(open(rp.calibration_summary).read())
        assert summary["split"] == "val" and summary["n_images"] > 0
        assert os.path.exists(rp.calibration)
    assert os.path.exists(RoundPaths(run_root, 0).detections)  # round 0's (IoU-aware) model scored the pool
    assert "## Calibration" in open(os.path.join(run_root, "report", "report.md")).read()
