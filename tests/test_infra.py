"""The cluster manifests parse and ask for what the code and configs expect."""
from __future__ import annotations

import json
import os
import shlex

import yaml
from hydra import compose, initialize_config_dir

from raylib.config import to_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    with open(os.path.join(ROOT, "infra", name)) as handle:
        return yaml.safe_load(handle)


def _gpu4_config():
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return to_config(compose("config", overrides=["experiment=voc07_12", "storage.bucket=raylib-runs"]))


def test_launcher_gpu_workers_fit_the_gpu4_config():
    cluster = _load("aws-cluster.yaml")
    cfg = _gpu4_config()
    workers = [node for name, node in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    gpus = [node["resources"]["GPU"] for node in workers]
    assert max(gpus) == 4
    # One node must hold the whole data-parallel training job (one GPU per Ray Train worker).
    assert cfg.train.use_gpu and cfg.train.num_workers * 1 <= max(gpus)
    assert cfg.train.num_workers * cfg.train.cpus_per_worker <= max(n["resources"]["CPU"] for n in workers)
    assert cfg.score.num_actors * cfg.score.num_gpus_per_actor <= sum(gpus)
    assert all(n["node_config"]["IamInstanceProfile"]["Name"] for n in cluster["available_node_types"].values())
    assert any("ray[default" in cmd and "2.60.0" in cmd for cmd in cluster["setup_commands"])


def test_kuberay_job_runs_the_loop_entry_point_on_4_gpu_workers():
    job = _load("kuberay.yaml")
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/loop.py"] and os.path.exists(os.path.join(ROOT, argv[1]))
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = to_config(compose("config", overrides=argv[2:]))  # overrides in the manifest are valid
    assert cfg.run_root.startswith("s3://")
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert max(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in groups) >= cfg.train.num_workers
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_iam_policy_grants_what_storage_uses_on_the_run_bucket():
    with open(os.path.join(ROOT, "infra", "iam-run-bucket-policy.json")) as handle:
        policy = json.load(handle)
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    # storage.py lists, reads, writes and deletes (stage reruns clear their outputs).
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    cfg = _gpu4_config()
    bucket = cfg.run_root[len("s3://"):].split("/")[0]
    resources = {r for statement in policy["Statement"] for r in [statement["Resource"]]}
    assert f"arn:aws:s3:::{bucket}" in resources and f"arn:aws:s3:::{bucket}/*" in resources
