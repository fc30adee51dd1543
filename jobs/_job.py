"""What every job does first, how it runs one stage alone, and how it names a missing input. Imported as
`_job`: a script's folder is first on sys.path (which is also why no job may be named after a
standard-library module).

Only the config's modules are imported here (they register the schema Hydra composes against): torch,
Ray and the stages are imported once there is work to do, so `--help`, `--cfg job` and a config error
answer in about a second."""
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from raylib import console
from raylib.config import Config, ConfigError, override_problem, to_config

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def run(main: Callable[[], None], doc: str) -> None:
    """A job's entry point: Hydra's `main`, after two answers of our own. `--help` prints the job's
    docstring, the presets and the key sections (Hydra's help composes every group option: 2-3 s). An
    override naming no config key or preset exits with one line naming the nearest valid ones (Hydra's
    answer is an error block advising `+key=`, which the schema refuses anyway)."""
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print(help_text(doc))
        return
    groups = config_groups()
    for arg in args:
        problem = override_problem(arg, groups)
        if problem:
            raise SystemExit(f"error: {problem}")
    main()


def config_groups() -> dict[str, list[str]]:
    """Each config group of conf/ and its presets (file names without .yaml)."""
    return {group: sorted(name[:-5] for name in os.listdir(os.path.join(CONF_DIR, group)) if name.endswith(".yaml"))
            for group in sorted(os.listdir(CONF_DIR)) if os.path.isdir(os.path.join(CONF_DIR, group))}


def help_text(doc: str) -> str:
    from raylib.config import Config

    presets = "\n".join(f"  {group}={' | '.join(names)}" for group, names in config_groups().items())
    sections = ", ".join(name for name, value in vars(Config()).items() if hasattr(value, "__dataclass_fields__"))
    return (f"{doc.strip()}\n\nPresets (group=preset; experiment= sets several groups at once):\n{presets}\n\n"
            f"Any key as key=value, e.g. strategy.k=50 loop.rounds=3; sections: {sections} (raylib/config.py).\n"
            "--cfg job prints the composed config; -m runs a sweep (e.g. -m seed=0,1,2); "
            "jobs/check.py checks a config and prints the plan.")


def start(cfg: DictConfig, with_ray: bool = True) -> Config:
    """Log raylib at INFO, check the config, point storage at the configured S3 endpoint and try the S3
    locations it names, then start or join Ray (`with_ray`; jobs that only stream Parquet in-process
    don't). An unreachable endpoint, missing credentials, a missing bucket or a denied prefix exits with
    one line naming the key and the fix, within seconds (`storage.access_problem`). Ray's known-harmless
    C++ note is kept off the console (`console.filter_stderr`) from before Ray starts."""
    logging.getLogger("raylib").setLevel(logging.INFO)
    console.filter_stderr()
    try:
        config = to_config(cfg)
    except ConfigError as error:  # one line naming the key, not a traceback
        raise SystemExit(f"error: {error}") from None
    from raylib import check, runtime, storage  # pyarrow, Ray: not for --help

    storage.configure_s3(config.storage.endpoint_url, config.storage.region)
    problem = storage.access_problem(check.storage_uris(config))
    if problem:
        raise SystemExit(f"error: {problem}")
    if with_ray:
        runtime.init_ray(config)
    return config


def sweep_point(work: Callable[[], object]) -> None:
    """Run one job. Alone, a config error exits with its one line. In a sweep (`-m`), a failed point
    is reported (console and `<sweep dir>/failed_points.txt`) and the sweep goes on with the others;
    each finished run's comparison report reads whichever runs beside it finished."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            work()
        except ConfigError as error:
            raise SystemExit(f"error: {error}") from None
        return
    point = " ".join(hydra_cfg.overrides.task)
    try:
        work()
    except (Exception, SystemExit) as error:  # noqa: BLE001 - one point's failure, whatever it is
        message = f"sweep point [{point}] failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        logging.getLogger("raylib").exception(message)
        os.makedirs(hydra_cfg.sweep.dir, exist_ok=True)
        from raylib.paths import FAILED_POINTS_FILE

        with open(os.path.join(hydra_cfg.sweep.dir, FAILED_POINTS_FILE), "a") as handle:
            handle.write(message + "\n")
        print(message, flush=True)


def require(uri: str, what: str, remedy: str) -> str:
    """`uri`, or exit naming what is missing there and the job that makes it."""
    from raylib import storage

    if not storage.exists(uri):
        raise SystemExit(f"no {what} at {uri}: {remedy}")
    return uri


def run_alone(config: Config, stage: str, needs: Callable[[Any], list[tuple[str, str, str]]] = lambda rp: [],
              with_ray: bool = True) -> tuple[dict, Any]:
    """Run stage `stage` of round `config.round_idx` as the loop runs it (raylib/stages.py), after checking
    its inputs: `needs(rp)` lists (uri, what, remedy). No marker is written: the loop still runs its own
    stages. Returns the stage's summary and the round's paths (a RoundPaths)."""
    from raylib import runtime, stages
    from raylib.dataset import ensure_dataset
    from raylib.paths import RoundPaths

    rp = RoundPaths(config.run_root, config.round_idx)
    for uri, what, remedy in needs(rp):
        require(uri, what, remedy)
    if with_ray:
        runtime.init_ray(config)
    summary = stages.BY_NAME[stage](config, ensure_dataset(config), rp)
    logging.getLogger("raylib.jobs").info(f"[{rp.name}] {stage}: {summary}")
    return summary, rp
