"""The cluster image and manifests parse and ask for what the code, configs and pins expect.

No docker here: the Dockerfile is read as text (its pins against scripts/setup.sh and pyproject.toml),
the KubeRay manifests with yaml, and the RayJob's overrides are composed with conf/."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib

import yaml
from hydra import compose, initialize_config_dir
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from raylib.config import to_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET_PLACEHOLDER = "REPLACE_WITH_BUCKET"  # in the RayJob's entrypoint
PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-r", "-c", "-f", "--find-links"}


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def _load(name: str):
    return yaml.safe_load(_read("infra", name))


def _kuberay() -> dict:
    """infra/kuberay.yaml's resources by kind (one of each)."""
    docs = [doc for doc in yaml.safe_load_all(_read("infra", "kuberay.yaml")) if doc]
    kinds = [doc["kind"] for doc in docs]
    assert sorted(kinds) == ["RayCluster", "RayJob"], kinds
    assert all(doc["apiVersion"] == "ray.io/v1" for doc in docs)
    return {doc["kind"]: doc for doc in docs}


def _dockerfile() -> dict:
    """infra/Dockerfile as (base image, WORKDIR, COPY sources, pip installs: [(options, requirements)]),
    with the ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", _read("infra", "Dockerfile"))  # continuation lines joined
    instructions = [line.strip().split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    def substitute(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    out = {"from": [], "workdir": None, "copy": [], "pip": []}
    for word, rest in instructions:
        rest = substitute(rest)
        if word == "FROM":
            out["from"].append(rest)
        elif word == "WORKDIR":
            out["workdir"] = rest
        elif word == "COPY":
            out["copy"] += [token for token in shlex.split(rest) if not token.startswith("--")][:-1]
        elif word == "RUN" and "pip install" in rest:
            tokens = shlex.split(rest.split("pip install", 1)[1])
            options, requirements, skip = [], [], False
            for token in tokens:
                if skip:
                    options[-1] += f"={token}"
                    skip = False
                elif token.startswith("-"):
                    options.append(token)
                    skip = token in PIP_OPTIONS_WITH_VALUE
                else:
                    requirements.append(token)
            out["pip"].append((options, requirements))
    return out


def _image_pins() -> dict[str, Requirement]:
    """The Dockerfile's pinned requirements by canonical name; everything but the project itself is
    pinned to one exact version, and the project comes in without dependencies."""
    pins = {}
    for options, requirements in _dockerfile()["pip"]:
        for token in requirements:
            if token == ".":
                assert "--no-deps" in options, "the project installs without deps: all of them are pinned above"
                continue
            requirement = Requirement(token)
            assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", token
            name = canonicalize_name(requirement.name)
            assert name not in pins, f"{name} installed twice"
            pins[name] = requirement
    return pins


def _pinned_version(requirement: Requirement) -> str:
    return next(iter(requirement.specifier)).version


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["project"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return to_config(compose("config", overrides=overrides))


def _gpu4_config():
    return _compose(["experiment=voc07_12", "storage.bucket=raylib-runs"])


def _containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _project_image() -> str:
    images = {c["image"] for c in _containers(_kuberay()["RayCluster"]["spec"])}
    assert len(images) == 1, images
    return images.pop()


def test_image_pins_equal_setup_sh_and_satisfy_pyproject():
    pins = _image_pins()
    # scripts/setup.sh pins torch/torchvision for the tested venv: the image has the same versions.
    setup_pins = [Requirement(r) for r in re.findall(r'"([A-Za-z0-9_.\-]+==[^"\s]+)"', _read("scripts", "setup.sh"))]
    dependencies = [Requirement(r) for r in _pyproject()["dependencies"]]
    dependency_names = {canonicalize_name(r.name) for r in dependencies}
    shared = [r for r in setup_pins if canonicalize_name(r.name) in dependency_names]
    assert {canonicalize_name(r.name) for r in shared} >= {"torch", "torchvision"}
    for requirement in shared:
        assert _pinned_version(pins[canonicalize_name(requirement.name)]) == _pinned_version(requirement), requirement
    # Every dependency of pyproject.toml (and the cluster and mlflow extras) pinned, at a version pyproject
    # accepts, with the extras it asks for.
    extras = [Requirement(r) for extra in ("cluster", "mlflow") for r in _pyproject()["optional-dependencies"][extra]]
    for requirement in dependencies + extras:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"the image does not pin {requirement}"
        assert requirement.specifier.contains(_pinned_version(pins[name]), prereleases=True), (requirement, pins[name])
        assert requirement.extras <= pins[name].extras, (requirement, pins[name])


def test_image_base_is_rays_matching_python_and_torchs_cuda():
    dockerfile = _dockerfile()
    assert len(dockerfile["from"]) == 1
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", dockerfile["from"][0])
    assert match, dockerfile["from"]
    ray_version, major, minor, cuda = match.groups()
    assert _pinned_version(_image_pins()["ray"]) == ray_version == _kuberay()["RayCluster"]["spec"]["rayVersion"]
    assert (int(major), int(minor)) == sys.version_info[:2], "the image's Python is not the tests' Python"
    # torch and torchvision come from the wheel index of the base image's CUDA, and only from there.
    torch_installs = [(options, reqs) for options, reqs in dockerfile["pip"]
                      if {canonicalize_name(Requirement(r).name) for r in reqs if r != "."} & {"torch", "torchvision"}]
    assert len(torch_installs) == 1
    options, requirements = torch_installs[0]
    assert f"--index-url=https://download.pytorch.org/whl/{cuda}" in options
    assert {canonicalize_name(Requirement(r).name) for r in requirements} == {"torch", "torchvision"}


def test_image_holds_what_a_job_needs_and_the_context_keeps_the_rest_out():
    dockerfile = _dockerfile()
    copied = {source.rstrip("/") for source in dockerfile["copy"]}
    # The package, its launcher plugin, the configs, the job scripts, and what pip reads to install it.
    assert {"raylib", "hydra_plugins", "conf", "jobs", "pyproject.toml", _pyproject()["readme"]} <= copied
    assert all(os.path.exists(os.path.join(ROOT, source)) for source in copied)
    ignored = {line.strip() for line in _read(".dockerignore").splitlines() if line.strip() and line[0] != "#"}
    assert {".venv", ".git", "outputs", ".devwhl"} <= ignored
    assert not copied & ignored


def test_kuberay_cluster_runs_the_project_image_on_4_gpu_workers():
    cluster = _kuberay()["RayCluster"]
    image = _project_image()
    # Not Ray's bare image: the runtime env installs nothing, so the nodes' image must hold the project.
    assert not image.startswith("rayproject/"), image
    gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in _containers(cluster["spec"])]
    assert max(gpus) >= _gpu4_config().train.num_workers


def test_rayjob_runs_the_loop_on_the_clusters_spec_and_composes_with_conf():
    resources = _kuberay()
    job = resources["RayJob"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    # The same pods as the RayCluster (image, GPU group, service account): one spec, kept equal.
    assert job["rayClusterSpec"] == resources["RayCluster"]["spec"]
    assert {c["image"] for c in _containers(job["rayClusterSpec"])} == {_project_image()}
    # Its runtime env installs nothing, runs from the image's copy of the repo, with runtime_env.yaml's vars.
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert not {"pip", "uv", "conda"} & set(runtime_env)
    assert runtime_env["working_dir"] == _dockerfile()["workdir"]
    assert runtime_env["env_vars"] == _load("runtime_env.yaml")["env_vars"]
    command = shlex.split(job["entrypoint"])
    assert command[:2] == ["python", "jobs/loop.py"] and os.path.exists(os.path.join(ROOT, command[1]))
    overrides = [arg.replace(BUCKET_PLACEHOLDER, "my-bucket") for arg in command[2:]]
    assert overrides != command[2:], f"the bucket placeholder {BUCKET_PLACEHOLDER} is gone from the entrypoint"
    cfg = _compose(overrides)
    assert cfg.run_root.startswith("s3://my-bucket/runs/") and cfg.storage.kind == "s3"
    assert cfg.data.root == "s3://my-bucket/VOC0712" and cfg.cluster.address == "auto"
    # Training and scoring fit the job's GPU worker group.
    workers = [c for g in job["rayClusterSpec"]["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    gpus = max(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in workers)
    assert cfg.train.use_gpu and cfg.train.num_workers <= gpus
    assert cfg.score.num_actors * cfg.score.num_gpus_per_actor <= gpus * max(g["maxReplicas"] for g in
                                                                           job["rayClusterSpec"]["workerGroupSpecs"])


def test_runtime_env_installs_nothing_unpinned_and_leaks_no_credentials():
    env = _load("runtime_env.yaml")
    assert "conda" not in env
    # The image holds the dependencies; a pip/uv list, if any, may only repeat the image's exact pins.
    pins = _image_pins()
    for key in ("pip", "uv"):
        packages = env.get(key, [])
        packages = packages["packages"] if isinstance(packages, dict) else packages
        for package in packages:
            requirement = Requirement(package)
            assert str(requirement.specifier).startswith("==") and len(requirement.specifier) == 1, package
            assert pins[canonicalize_name(requirement.name)].specifier == requirement.specifier, package
    assert ".venv/" in env["excludes"] and env["working_dir"] == "."
    # Never credentials in a runtime env (Ray writes it into its logs).
    assert not any(key.startswith("AWS_") and ("KEY" in key or "TOKEN" in key) for key in env["env_vars"])


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
    assert not cluster["setup_commands"]  # nothing installs on the nodes: the image has it


def test_launcher_nodes_run_the_project_image():
    assert _load("aws-cluster.yaml")["docker"]["image"] == _project_image()


def test_readme_cluster_path_commands_are_valid():
    readme = _read("README.md")
    section = readme.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    for step in ("ray up infra/aws-cluster.yaml", "ray job logs", "--runtime-env infra/runtime_env.yaml", "RAY_ADDRESS=",
                 "kubectl apply -f infra/kuberay.yaml -l app.kubernetes.io/component=cluster",
                 "kubectl apply -f infra/kuberay.yaml -l app.kubernetes.io/component=job",
                 f"docker build -f infra/Dockerfile -t {_project_image()} ."):
        assert step in section, step
    labels = {kind: doc["metadata"]["labels"]["app.kubernetes.io/component"] for kind, doc in _kuberay().items()}
    assert labels == {"RayCluster": "cluster", "RayJob": "job"}
    code = "\n".join(block.split("\n", 1)[1] for block in section.split("```")[1::2])  # fenced blocks
    commands = [line.split("python jobs/", 1)[1].split(" ", 1)[1] for line in code.replace("\\\n", " ").splitlines()
                if "python jobs/loop.py" in line or "python jobs/status.py" in line]
    assert len(commands) == 2
    for command in commands:
        overrides = [arg.replace("<bucket>", "my-bucket") for arg in shlex.split(command.split("#")[0])]
        cfg = _compose(overrides)
        cluster = "experiment=voc07_12" in overrides
        assert cfg.run_root.startswith("s3://my-bucket/runs/voc_s/" if cluster else os.getcwd()), command


def test_iam_policy_grants_what_storage_uses_on_the_run_bucket():
    policy = json.loads(_read("infra", "iam-run-bucket-policy.json"))
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    # storage.py lists, reads, writes and deletes (stage reruns clear their outputs).
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions
    cfg = _gpu4_config()
    bucket = cfg.run_root[len("s3://"):].split("/")[0]
    resources = {r for statement in policy["Statement"] for r in [statement["Resource"]]}
    assert f"arn:aws:s3:::{bucket}" in resources and f"arn:aws:s3:::{bucket}/*" in resources
