"""The settings of `hydra/launcher=ray_jobs`, registered in Hydra's ConfigStore (a typo in
`hydra.launcher.*` is an error). Imported by Hydra's plugin scan at every start: no Ray here."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


def _runtime_env() -> Dict[str, Any]:
    # The code travels (working dir: where the sweep is started, the repo root), the dependencies don't:
    # the nodes' image (infra/Dockerfile) has them. infra/runtime_env.yaml's, less AWS_REGION (the
    # cluster's own, from the nodes' instance profile or environment).
    return {
        "working_dir": ".",
        "excludes": [".venv/", "outputs/", ".git/", "tests/", "benchmarks/", "*.pt", "*.parquet"],
        "env_vars": {"RAY_DEDUP_LOGS": "0"},
    }


@dataclass
class RayJobsLauncherConf:
    _target_: str = "hydra_plugins.raylib_launcher.ray_jobs_launcher.RayJobsLauncher"
    # The cluster's dashboard (Ray's job API). null: $RAY_ADDRESS, else http://127.0.0.1:8265.
    address: Optional[str] = None
    # Points submitted and not finished, at most; the rest wait here. The cluster's queue or autoscaler
    # decides when a submitted point gets the resources its config asks for.
    max_parallel: int = 4
    # Seconds between two status polls of the running points.
    poll_s: float = 2.0
    # Appended to every point whose config has the key (a point's own value is replaced): a point
    # joins the cluster it runs on instead of starting a private Ray.
    point_overrides: List[str] = field(default_factory=lambda: ["cluster.address=auto"])
    # Each point's runtime env (Ray's keys). A relative working_dir is read from where the sweep starts,
    # and the job script must be inside it; the points' env vars add to these.
    runtime_env: Dict[str, Any] = field(default_factory=_runtime_env)
    # Resources of each point's driver process (the entrypoint); its Ray tasks ask for their own.
    entrypoint_num_cpus: Optional[float] = None
    entrypoint_num_gpus: Optional[float] = None
    # The interpreter on the cluster's nodes.
    python: str = "python"
    # After the last point: when the points' configs share one runs folder (the parent of `run_root`),
    # one more job writes the comparison of every run there (raylib.report.compare_runs).
    compare: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="ray_jobs", node=RayJobsLauncherConf,
                             provider="raylib_launcher")
