"""What every job does before its stage: start or join Ray; progress lines of Ray Data stages."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from raylib import console, storage
from raylib.config import Config

log = logging.getLogger(__name__)

# Set for a private local Ray before it starts (its raylet and workers inherit it). Ray Data 2.60 lists
# the files of every read_parquet through 32 footer-reader actors, each a new process importing Ray
# Data: on 2 cores a scoring stage spent 7 s listing one manifest file, 2.4 s with one actor (which
# has 128 I/O threads: enough for the files of one machine). Ray Train 2.60's controller takes a worker's
# `ray.train.report` off a queue of one every health check, 2 s by default, so reporting every epoch (as
# training does) made every epoch last at least 2 s: the demo's epochs take 1.5 s. Clusters keep Ray's
# defaults (their epochs take minutes).
LOCAL_RAY_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def in_tasks(fn: Callable[..., Any], calls: list[tuple], num_cpus: float, big_enough: bool = True,
             shared: tuple = ()) -> Iterator[Any]:
    """`fn(*args, *shared)` for the `args` of every call, in order: one Ray task each, asking `num_cpus`,
    when Ray is running and the work is `big_enough` (the caller's rule: a task costs tens of ms to
    start), else here, lazily. `shared` is put in the object store once for all tasks. An error of `fn` is
    raised as itself (a ConfigError stays one line on the screen), with Ray's traceback as its cause."""
    import ray  # here, not at the top: the dataset checks and the jobs' --help import without Ray

    if not (ray.is_initialized() and big_enough):
        return (fn(*args, *shared) for args in calls)
    task = ray.remote(num_cpus=num_cpus)(fn)
    shared_refs = [ray.put(value) for value in shared]
    return (_result(ref) for ref in [task.remote(*args, *shared_refs) for args in calls])


def _result(ref: Any) -> Any:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Exception):
            raise error.cause from error
        raise


def in_task(fn: Callable[..., Any], *args: Any, num_cpus: float = 0) -> Any:
    """`fn(*args)` in one Ray task when Ray is running (here otherwise): a stage's work on the cluster, so
    that what it reads (a take-all round's millions of rows) never reaches the driver. The task takes
    no CPU by default: it waits on the tasks it fans out, as the driver would."""
    return next(in_tasks(fn, [args], num_cpus))


def cpu_threads(num_cpus: float, torch_threads: int | None) -> int:
    """Intra-op threads of a CPU worker or actor: its `torch_threads` if set, else its whole CPUs (>= 1).

    Ray sets OMP_NUM_THREADS = floor(num_cpus) (1 for fractional actors) in its workers; we set the
    count explicitly so that a config, not an environment default, decides it. It changes results:
    float sums split over another number of threads round differently, and a model trained with 2
    threads differs from one trained with 1 (seen: every tensor of a 1-epoch nano), so reproducing a
    run on another machine means giving the same count."""
    return torch_threads or max(1, int(num_cpus))


def init_ray(cfg: Config) -> None:
    """`address=local` starts a private Ray (embedded defaults); `auto` joins the cluster of a Ray job.

    The S3 endpoint/region travel to workers in the runtime env, so S3 URIs resolve the same
    everywhere, except those a submitted job's runtime env sets already (Ray refuses the same env var
    from both). Ray Data's progress is condensed: no bars off a terminal (the stages print their own
    lines), one bar per dataset on one.
    """
    import ray

    storage.configure_s3(cfg.storage.endpoint_url, cfg.storage.region)
    os.environ.update(cfg.cluster.env_vars)  # before Ray starts: a local raylet and its workers inherit them
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if cfg.cluster.address == "local":
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
        # A notice about a choice, not about this run, on every start: its token auth is on (Ray's default, kept).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kwargs = init_kwargs(cfg, free_port() if cfg.cluster.address == "local" else None)
    ray.init(address=cfg.cluster.address, **kwargs)
    condense_ray_data_progress(sys.stdout.isatty())


def init_kwargs(cfg: Config, dashboard_port: int | None) -> dict:
    """`ray.init`'s arguments besides the address. A local Ray gets its dashboard on `dashboard_port`,
    and its workers are told that address: the dashboard (127.0.0.1) serves the state API that Ray
    Train's placement-group cleaner polls, and without an explicit address the cleaner looks for
    "the" Ray of the machine and fails with a traceback when another user's Ray runs beside ours."""
    env_vars = worker_env_vars(cfg.cluster.env_vars)
    kwargs: dict = {"log_to_driver": True}
    if cfg.cluster.address == "local":
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
        kwargs.update(num_cpus=cfg.cluster.num_cpus, include_dashboard=True, dashboard_port=dashboard_port)
    kwargs["runtime_env"] = {"env_vars": env_vars} if env_vars else None
    return kwargs


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env_vars(cluster_env: dict[str, str] | None = None) -> dict[str, str]:
    """The S3 settings and `cluster.env_vars` for `ray.init`'s runtime env, less those the submitted job's
    runtime env (`ray job submit --runtime-env`, a RayJob's runtimeEnvYAML) sets: Ray refuses a key sent twice."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    from_job = (job_config.get("runtime_env") or {}).get("env_vars") or {}
    wanted = {**storage.s3_env(), **(cluster_env or {})}
    return {name: value for name, value in wanted.items() if name not in from_job}


def condense_ray_data_progress(terminal: bool) -> None:
    """On a terminal one progress bar per dataset; elsewhere none, and no per-dataset plan logs: the
    stages print their own progress lines (`report_progress`)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_operator_progress_bars = False
    if not terminal:
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": we know


def progress_text(label: str, done: int, total: int, seconds: float, rate: float | None, final: bool) -> str:
    """`[score] 1200/40000 images, 95.3 img/s, ETA 6m47s` while it runs (`rate`: images/s since the first
    images came out, so actor start-up does not stretch the ETA; None before), and at the end
    `[score] 40000/40000 images in 420.5 s, 95.1 img/s`."""
    speed = f"{done / max(seconds, 1e-9):.1f} img/s"
    if final:
        return f"[{label}] {done}/{total} images in {seconds:.1f} s, {speed}"
    if not done:
        return f"[{label}] 0/{total} images, starting"
    line = f"[{label}] {done}/{total} images, {speed}"
    return line + (f", ETA {console.eta_text((total - done) / rate)}" if rate else "")


def report_progress(dataset: Any, label: str, total: int, operator: str, interval_s: float = 10.0) -> None:
    """While `dataset` executes, print `progress_text` every `interval_s` and a last line when it ends,
    counting the rows out of the operator whose name contains `operator` (e.g. the scoring actor's
    class). Registered on this dataset only (its DataContext)."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class Progress(ExecutionCallback):
        def __init__(self) -> None:
            self.started = self.printed = time.time()
            self.first_out: tuple[float, int] | None = None  # (time, rows) when images first came out

        @staticmethod
        def _rows(executor: Any) -> int:
            rows = 0
            for op in getattr(executor, "_topology", None) or {}:  # Ray internals: no count, no crash
                if operator in op.name:
                    rows = getattr(op.metrics, "rows_task_outputs_generated", 0)
            return rows

        def _line(self, executor: Any, final: bool) -> str:
            rows, now, rate = self._rows(executor), time.time(), None
            if self.first_out is not None and rows > self.first_out[1] and now > self.first_out[0]:
                rate = (rows - self.first_out[1]) / (now - self.first_out[0])
            return progress_text(label, rows, total, now - self.started, rate, final)

        def before_execution_starts(self, executor: Any) -> None:
            self.started = self.printed = time.time()
            self.first_out = None

        def on_execution_step(self, executor: Any) -> None:
            if self.first_out is None and (rows := self._rows(executor)):
                self.first_out = (time.time(), rows)
            if time.time() - self.printed >= interval_s:
                self.printed = time.time()
                log.info(self._line(executor, final=False))

        def after_execution_succeeds(self, executor: Any) -> None:
            log.info(self._line(executor, final=True))

    dataset.context.custom_execution_callback_classes.append(Progress)
