"""The cluster manifests parse and ask for what the code and configs expect."""
from __future__ import annotations

import json
import os
import re
import shlex
import tomllib

import yaml
from hydra import compose, initialize_config_dir

from raylib.config import to_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_IMAGE = "rayproject/ray:2.60.0-py311-gpu"


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
    # One install: the nodes run Ray's own image, the jobs bring the project's dependencies.
    assert cluster["docker"]["image"] == RAY_IMAGE and not cluster["setup_commands"]


def test_kuberay_cluster_runs_rays_image_on_4_gpu_workers():
    ray_cluster = _load("kuberay.yaml")
    assert ray_cluster["kind"] == "RayCluster" and ray_cluster["spec"]["rayVersion"] == "2.60.0"
    groups = [ray_cluster["spec"]["headGroupSpec"], *ray_cluster["spec"]["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    # ray-ml images stopped at 2.49 (ray-project/ray#57070): pods would stay in ImagePullBackOff.
    assert {c["image"] for c in containers} == {RAY_IMAGE}
    gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in containers]
    assert max(gpus) >= _gpu4_config().train.num_workers


def test_runtime_env_installs_the_projects_dependencies():
    env = _load("runtime_env.yaml")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        wanted = tomllib.load(handle)["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", req)[0] for req in env["pip"]["packages"]}
    # What the image lacks of pyproject's dependencies (it has Ray, numpy, pyarrow, pandas, pillow).
    in_image = {"ray", "numpy", "pyarrow", "pandas", "pillow"}
    assert {re.split(r"[<>=\[ ]", req)[0] for req in wanted} - in_image <= names
    assert "pixeltable-yolox==0.4.3" in env["pip"]["packages"]
    assert ".venv/" in env["excludes"] and env["working_dir"] == "."
    # Never credentials in a runtime env (Ray writes it into its logs).
    assert not any(key.startswith("AWS_") and ("KEY" in key or "TOKEN" in key) for key in env["env_vars"])


def test_readme_cluster_path_commands_are_valid():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    section = readme.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    for step in ("ray up infra/aws-cluster.yaml", "kubectl apply -f infra/kuberay.yaml", "ray job logs",
                 "--runtime-env infra/runtime_env.yaml", "RAY_ADDRESS="):
        assert step in section, step
    code = "\n".join(block.split("\n", 1)[1] for block in section.split("```")[1::2])  # fenced blocks
    commands = [line.split("python jobs/", 1)[1].split(" ", 1)[1] for line in code.replace("\\\n", " ").splitlines()
                if "python jobs/loop.py" in line or "python jobs/status.py" in line]
    assert len(commands) == 2
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        for command in commands:
            overrides = [arg.replace("<bucket>", "my-bucket") for arg in shlex.split(command.split("#")[0])]
            cfg = to_config(compose("config", overrides=overrides))
            cluster = "experiment=voc07_12" in overrides
            assert cfg.run_root.startswith("s3://my-bucket/runs/voc_s/" if cluster else os.getcwd()), command


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
