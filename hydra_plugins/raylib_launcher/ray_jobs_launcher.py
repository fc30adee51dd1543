"""A Hydra launcher that runs each point of a sweep as its own Ray job on a cluster.

    python jobs/loop.py -m hydra/launcher=ray_jobs hydra.launcher.address=http://<head>:8265 strategy=cls_iou,random seed=0,1

Each point is `python <job script> <the point's overrides> cluster.address=auto hydra.run.dir=<sweep dir>/<n>`,
submitted with `JobSubmissionClient.submit_job` and the launcher's `runtime_env`; at most
`hydra.launcher.max_parallel` are submitted and not finished. The launcher polls them, prints a line
whenever a point's status changes, keeps each point's job log in `<sweep dir>/<n>/ray_job.log` and lists
the failed points in `<sweep dir>/failed_points.txt`, as `jobs/_job.py` `sweep_point` does for the basic
launcher. A failed point never stops the others; once all are done, Hydra's sweeper reads the results
and the sweep exits non-zero when one failed. Ray is imported only here, when a sweep starts."""
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from raylib.paths import FAILED_POINTS_FILE

JOB_LOG_FILE = "ray_job.log"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# A head answers before its job agent has registered: a submission then fails with "No available agent to
# submit job, please try again later" (seen on a freshly started head on a loaded 2-core box).
AGENT_WAIT_S = 60
# Hydra overrides a point's job does not get: they are the sweep's own, or the launcher sets them.
SWEEP_ONLY = ("hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.sweep", "hydra.run",
              "hydra.mode")
# The comparison job: raylib.report.compare_runs over the runs folder the points share (argv[1]).
COMPARE_CODE = ("import sys; from raylib import paths, report; root = sys.argv[1]; "
                "print('comparison:', report.compare_runs(root, paths.comparison_dir(root)) or 'no finished runs under ' + root)")


class SweepPointFailed(CompactHydraException):
    """A point's Ray job ended FAILED or STOPPED, or was never submitted. Hydra's sweeper raises it
    when it reads that point's result, after every point has run; Hydra prints its one line (compact:
    no traceback of Hydra's own frames) and exits 1."""


@dataclass
class Point:
    """One point of the sweep and its Ray job."""

    idx: int
    overrides: list[str]  # the point's own, as Hydra's sweeper made them
    cfg: DictConfig  # the point's composed config, hydra node included
    entrypoint: str
    job_dir: str  # <sweep dir>/<subdir>: the job's Hydra output dir, and its log here
    job_id: str | None = None
    status: str = "WAITING"
    message: str = ""  # why it failed

    @property
    def name(self) -> str:
        return " ".join(self.overrides)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _hydra_value(value: str) -> str:
    """`value` as one Hydra override value: quoted unless plainly a path (a comma would make a sweep)."""
    if re.fullmatch(r"[\w./:%@+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# A point's job first prints the interpreter its `python` is on that node (INTERPRETER_MARK + sys.executable):
# when the job's imports fail, the failed point's line names it and the fix (`_wrong_interpreter`).
INTERPRETER_MARK = "[ray_jobs] interpreter: "
MISSING_MODULE = re.compile(r"(ModuleNotFoundError|ImportError): No module named")
MISSING_COMMAND = re.compile(r": (command )?not found|No such file or directory")  # the shell's, for `python`


def _interpreter_first(python: str, command: list[str]) -> str:
    """`command`'s entrypoint, after a line naming the interpreter `python` resolves to on the node."""
    probe = shlex.join([python, "-c", f"import sys; print({INTERPRETER_MARK!r} + sys.executable, flush=True)"])
    return f"{probe} && {shlex.join(command)}"


def _wrong_interpreter(logs: str, python: str) -> str:
    """For a point that failed because its interpreter lacks the project (or is not there): which one ran
    and how to point the launcher at the project's; "" for any other failure."""
    ran = next((line[len(INTERPRETER_MARK):].strip() for line in logs.splitlines()  # not the echoed entrypoint's
                if line.startswith(INTERPRETER_MARK)), None)
    if not (MISSING_MODULE if ran else MISSING_COMMAND).search(_last_error(logs)):
        return ""
    ran = ran or f"'{python}' (not found on the node)"
    return (f"; the point ran {ran} (hydra.launcher.python={python}), which lacks the project (or a dependency): set "
            f"hydra.launcher.python to the nodes' interpreter that has it (on this machine: "
            f"hydra.launcher.python={sys.executable}), or start the cluster from the project's image (infra/Dockerfile)")


def _last_error(logs: str) -> str:
    """The line of a job's log that says why it failed: the last `error: ...` or `SomeError: ...` line
    (a traceback's last), else the last line; never Hydra's closing HYDRA_FULL_ERROR hint."""
    lines = [line.strip() for line in logs.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    for line in reversed(lines):
        if re.match(r"(error:|[\w.]*(Error|Exception|Exit)\b)", line):
            return line
    return lines[-1] if lines else ""


def submit_when_an_agent_is_up(client: Any, **job: Any) -> str:
    """`client.submit_job(**job)`, retried while the head says it has no job agent yet (AGENT_WAIT_S)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _is_local_dir(uri: str) -> bool:
    return "://" not in uri


class RayJobsLauncher(Launcher):
    def __init__(self, address: str | None, max_parallel: int, poll_s: float, point_overrides: Sequence[str],
                 runtime_env: Any, entrypoint_num_cpus: float | None, entrypoint_num_gpus: float | None,
                 python: str, compare: bool) -> None:
        if max_parallel < 1:
            raise ValueError(f"hydra.launcher.max_parallel={max_parallel}: must be >= 1")
        self.address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
        self.max_parallel = max_parallel
        self.poll_s = poll_s
        self.point_overrides = list(point_overrides)
        self.runtime_env: dict = OmegaConf.to_container(runtime_env) if isinstance(runtime_env, DictConfig) else dict(runtime_env or {})
        self.entrypoint_resources = {"entrypoint_num_cpus": entrypoint_num_cpus, "entrypoint_num_gpus": entrypoint_num_gpus}
        self.python = python
        self.compare = compare
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        sweep_dir = str(self.config.hydra.sweep.dir)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        working_dir = self.runtime_env.get("working_dir")
        if working_dir and _is_local_dir(working_dir):  # Ray resolves it from here; the points' logs name it
            self.runtime_env["working_dir"] = os.path.abspath(working_dir)
        script = self._script_path()
        points = [self._point(initial_job_idx + n, list(overrides), script) for n, overrides in enumerate(job_overrides)]
        client = self._client()
        print(f"[ray_jobs] {len(points)} point(s) as Ray jobs on {self.address}, at most {self.max_parallel} at once, "
              f"code from {self.runtime_env.get('working_dir') or 'the nodes'}; logs in {sweep_dir}/<n>/{JOB_LOG_FILE}", flush=True)
        try:
            self._run_all(client, points)
        except KeyboardInterrupt:  # the submitted points would run on: stop them
            for point in points:
                if point.job_id and point.status not in TERMINAL:
                    client.stop_job(point.job_id)
                    print(f"[ray_jobs] #{point.idx} [{point.name}] {point.job_id}: stopped", flush=True)
            raise
        failed = [point for point in points if point.status != "SUCCEEDED"]
        if failed:
            with open(os.path.join(sweep_dir, FAILED_POINTS_FILE), "a") as handle:
                handle.writelines(point.message + "\n" for point in failed)
        print(f"[ray_jobs] {len(points) - len(failed)} of {len(points)} point(s) succeeded"
              + (f"; {len(failed)} failed, listed in {sweep_dir}/{FAILED_POINTS_FILE}" if failed else ""), flush=True)
        if self.compare and len(failed) < len(points):
            self._compare(client, points)
        return [self._job_return(point) for point in points]

    def _client(self) -> Any:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as error:
            raise SystemExit(f"hydra/launcher=ray_jobs needs Ray's job API ({error}): pip install -e '.[cluster]'") from None
        # Ray's INFO lines at every submission (which .gitignore files apply, the package is uploaded already)
        for name in ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # and at every sweep, that .git/ and .venv/ are not shipped (the runtime env excludes them anyway)
        logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
        from ray.exceptions import AuthenticationError

        try:
            return JobSubmissionClient(self.address)
        except ConnectionError as error:
            raise SystemExit(f"no Ray dashboard answers at {self.address} ({str(error).splitlines()[0]}): start the "
                             "cluster, or set hydra.launcher.address (or RAY_ADDRESS)") from None
        except AuthenticationError:  # a head started without RAY_AUTH_MODE=disabled asks for its token
            raise SystemExit(f"the Ray dashboard at {self.address} asks for its token: export RAY_AUTH_MODE=token "
                             "(`ray start` wrote it to ~/.ray/auth_token; or RAY_AUTH_TOKEN), or start the head "
                             "with RAY_AUTH_MODE=disabled") from None

    def _script_path(self) -> str:
        """The job script as the cluster's job sees it: relative to the working dir Ray ships."""
        script = os.path.abspath(sys.argv[0])
        working_dir = self.runtime_env.get("working_dir")
        if not working_dir:
            return script  # no code shipped: the nodes share this filesystem
        base = working_dir if _is_local_dir(working_dir) else os.getcwd()  # a remote package holds what cwd holds
        relative = os.path.relpath(script, base)
        if relative.startswith(".."):
            raise SystemExit(f"the job script {script} is outside hydra.launcher.runtime_env.working_dir={working_dir}: "
                             "start the sweep from the folder that holds the project, or set working_dir to it")
        return relative

    def _point(self, idx: int, overrides: list[str], script: str) -> Point:
        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        job_dir = os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
        added = [override for override in self.point_overrides
                 if OmegaConf.select(cfg, _key(override), default="<absent>", throw_on_missing=False) != "<absent>"]
        own = [override for override in overrides if _key(override) not in {_key(a) for a in added}]
        hydra_overrides = [override for override in self.config.hydra.overrides.hydra
                           if not _key(override).startswith(SWEEP_ONLY)]
        args = [self.python, script, *own, *added, *hydra_overrides, f"hydra.run.dir={_hydra_value(job_dir)}"]
        return Point(idx, overrides, cfg, _interpreter_first(self.python, args), job_dir)

    def _run_all(self, client: Any, points: list[Point]) -> None:
        waiting, running = list(points), []
        while waiting or running:
            while waiting and len(running) < self.max_parallel:
                point = waiting.pop(0)
                if self._submit(client, point):
                    running.append(point)
            for point in list(running):
                status = client.get_job_status(point.job_id).value
                if status != point.status:
                    point.status = status
                    print(f"[ray_jobs] #{point.idx} [{point.name}] {point.job_id}: {status}", flush=True)
                if status in TERMINAL:
                    running.remove(point)
                    self._finish(client, point)
            if running:
                time.sleep(self.poll_s)  # polling the jobs' status, not waiting in place of them

    def _submit(self, client: Any, point: Point) -> bool:
        try:
            point.job_id = submit_when_an_agent_is_up(
                client, entrypoint=point.entrypoint, runtime_env=self.runtime_env,
                metadata={"hydra_sweep_dir": str(point.cfg.hydra.sweep.dir), "hydra_job_num": str(point.idx),
                          "overrides": point.name},
                **{key: value for key, value in self.entrypoint_resources.items() if value is not None})
        except Exception as error:  # noqa: BLE001 - this point is not submitted; the others go on
            point.status = "FAILED"
            point.message = f"sweep point [{point.name}] failed: not submitted: {type(error).__name__}: {error}"
            print(f"[ray_jobs] #{point.idx} [{point.name}] {point.message}", flush=True)
            return False
        return True

    def _finish(self, client: Any, point: Point) -> None:
        """Keep the job's log beside the sweep's other outputs; say why a failed point failed."""
        logs = client.get_job_logs(point.job_id)
        os.makedirs(point.job_dir, exist_ok=True)
        with open(os.path.join(point.job_dir, JOB_LOG_FILE), "w") as handle:
            handle.write(logs)
        if point.status != "SUCCEEDED":
            why = (_last_error(logs) or client.get_job_info(point.job_id).message or "no log") + _wrong_interpreter(logs, self.python)
            point.message = f"sweep point [{point.name}] failed: Ray job {point.job_id} {point.status}: {why}"
            print(f"[ray_jobs] {point.message}", flush=True)

    def _compare(self, client: Any, points: list[Point]) -> None:
        """One more job, where the runs are: the comparison of every run in the folder the points share."""
        run_roots = {OmegaConf.select(point.cfg, "run_root", default=None) for point in points}
        if None in run_roots:
            return  # a job script without run roots: nothing to compare
        from raylib.paths import runs_root

        roots = {runs_root(str(run_root)) for run_root in run_roots}
        if len(roots) != 1:
            print(f"[ray_jobs] no comparison: the points' runs lie in {len(roots)} folders", flush=True)
            return
        root = roots.pop()
        env = dict(self.runtime_env)
        storage = points[0].cfg.get("storage") or {}
        s3 = {name: str(value) for name, value in (("AWS_ENDPOINT_URL", storage.get("endpoint_url")),
                                                   ("AWS_REGION", storage.get("region"))) if value}
        env["env_vars"] = {**s3, **(env.get("env_vars") or {})}
        job_id = submit_when_an_agent_is_up(
            client, entrypoint=shlex.join([self.python, "-c", COMPARE_CODE, root]), runtime_env=env,
            metadata={"hydra_sweep_dir": str(points[0].cfg.hydra.sweep.dir), "comparison": root})
        print(f"[ray_jobs] comparison of the runs in {root}: {job_id}", flush=True)
        while (status := client.get_job_status(job_id).value) not in TERMINAL:
            time.sleep(self.poll_s)
        lines = [line for line in client.get_job_logs(job_id).splitlines() if line.strip()]
        print(f"[ray_jobs] comparison {status}: {lines[-1] if lines else 'no log'}", flush=True)

    def _job_return(self, point: Point) -> JobReturn:
        task_cfg = OmegaConf.masked_copy(point.cfg, [key for key in point.cfg if key != "hydra"])
        succeeded = point.status == "SUCCEEDED"
        return JobReturn(overrides=point.overrides, cfg=task_cfg, hydra_cfg=point.cfg.hydra, working_dir=point.job_dir,
                         task_name=str(point.cfg.hydra.job.name),
                         status=JobStatus.COMPLETED if succeeded else JobStatus.FAILED,
                         _return_value=point.job_id if succeeded else SweepPointFailed(point.message))
