"""Ray start-up details: no env var sent twice to a submitted job, condensed progress lines."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

from raylib import runtime


def test_worker_env_leaves_out_what_the_job_runtime_env_sets(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert {"AWS_ENDPOINT_URL", "AWS_REGION"} <= set(runtime.worker_env_vars())
    # What Ray's job manager hands a submitted driver (infra/kuberay.yaml's runtime env sets the region).
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"AWS_REGION": "us-east-1"}}}))
    env = runtime.worker_env_vars()
    assert "AWS_REGION" not in env and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


class CountingScorer:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"] * 2}


def test_report_progress_logs_images_done_of_total(ray_session, caplog):
    import ray.data

    dataset = ray.data.range(40).map_batches(CountingScorer, batch_size=8, num_cpus=0.5,
                                             compute=ray.data.ActorPoolStrategy(size=1))
    runtime.report_progress(dataset, "score", total=40, operator="CountingScorer", interval_s=3600)
    with caplog.at_level(logging.INFO, logger="raylib"):
        assert dataset.count() == 40
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("[score]")]
    assert len(lines) == 1 and re.fullmatch(r"\[score\] 40/40 images in [0-9.]+ s, [0-9.]+ img/s", lines[0]), lines


def test_progress_text_gives_an_eta_from_the_rate_after_start_up():
    assert runtime.progress_text("score", 0, 40000, 12.0, None, final=False) == "[score] 0/40000 images, starting"
    # 38,800 images left at 100 img/s; the 40 img/s so far include the actors' start-up.
    assert (runtime.progress_text("score", 1200, 40000, 30.0, 100.0, final=False)
            == "[score] 1200/40000 images, 40.0 img/s, ETA 6m28s")
    assert runtime.progress_text("score", 1200, 40000, 30.0, 10.0, final=False).endswith("ETA 1h04m")
    assert (runtime.progress_text("score", 40000, 40000, 420.5, 100.0, final=True)
            == "[score] 40000/40000 images in 420.5 s, 95.1 img/s")


def test_a_local_ray_tells_its_workers_its_own_dashboard():
    from raylib.config import ClusterConfig, Config

    local = runtime.init_kwargs(Config(cluster=ClusterConfig(address="local", num_cpus=2)), dashboard_port=18265)
    assert (local["dashboard_port"], local["num_cpus"], local["include_dashboard"]) == (18265, 2, True)
    assert local["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:18265"
    joined = runtime.init_kwargs(Config(cluster=ClusterConfig(address="auto")), dashboard_port=None)
    assert "dashboard_port" not in joined and "RAY_API_SERVER_ADDRESS" not in (joined["runtime_env"] or {}).get("env_vars", {})


def test_in_task_runs_in_another_process_and_raises_the_tasks_error_as_itself(ray_session):
    import os

    from raylib import runtime
    from raylib.config import ConfigError

    assert runtime.in_task(_pid) != os.getpid()
    with pytest.raises(ConfigError) as error:
        runtime.in_task(_refuse, "loop.labels_in")
    assert str(error.value) == "loop.labels_in: refused" and type(error.value) is ConfigError


def _pid() -> int:
    import os

    return os.getpid()


def _refuse(key: str) -> None:
    from raylib.config import ConfigError

    raise ConfigError(f"{key}: refused")


@pytest.mark.slow
def test_the_demos_workers_compute_with_the_pinned_kernels(tmp_path):
    """experiment=demo's `cluster.env_vars` reach the driver and a Ray worker of the Ray it starts: torch's
    kernels are AVX2's there whatever the CPU has (on an AVX-512 machine, its own would differ)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import os, ray, torch
from hydra import compose, initialize_config_dir
from raylib import runtime
from raylib.config import to_config
with initialize_config_dir(config_dir={os.path.join(root, "conf")!r}, version_base="1.3"):
    cfg = to_config(compose("config", overrides=["experiment=demo", "cluster.num_cpus=1"]))
runtime.init_ray(cfg)
@ray.remote(num_cpus=0)
def probe():
    import os, torch
    return torch.backends.cpu.get_cpu_capability(), os.environ["ONEDNN_MAX_CPU_ISA"]
print("driver", torch.backends.cpu.get_cpu_capability(), "worker", *ray.get(probe.remote()))
"""
    env = {name: value for name, value in os.environ.items() if name not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "driver AVX2 worker AVX2 AVX2", done.stdout
