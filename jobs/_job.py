"""What every job does first, and how it names a missing input. Imported as `_job`: a script's folder
is first on sys.path (which is also why no job may be named after a standard-library module)."""
import logging
from collections.abc import Callable

from omegaconf import DictConfig

from raylib import console, runtime, storage
from raylib.config import Config, ConfigError, to_config


def start(cfg: DictConfig, with_ray: bool = True) -> Config:
    """Log raylib at INFO, check the config, then start or join Ray (which also points storage at the
    configured S3 endpoint); jobs that only stream Parquet in-process set up storage alone. Ray's
    known-harmless C++ note is kept off the console (`console.filter_stderr`) from before Ray starts."""
    logging.getLogger("raylib").setLevel(logging.INFO)
    console.filter_stderr()
    try:
        config = to_config(cfg)
    except ConfigError as error:  # one line naming the key, not a traceback
        raise SystemExit(f"error: {error}") from None
    if with_ray:
        runtime.init_ray(config)
    else:
        storage.configure_s3(config.storage.endpoint_url, config.storage.region)
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
        storage.makedirs(hydra_cfg.sweep.dir)
        with open(f"{hydra_cfg.sweep.dir}/failed_points.txt", "a") as handle:
            handle.write(message + "\n")
        print(message, flush=True)


def require(uri: str, what: str, remedy: str) -> str:
    """`uri`, or exit naming what is missing there and the job that makes it."""
    if not storage.exists(uri):
        raise SystemExit(f"no {what} at {uri}: {remedy}")
    return uri
