"""What every job does first, and how it names a missing input. Imported as `_job`: a script's folder
is first on sys.path (which is also why no job may be named after a standard-library module)."""
import logging

from omegaconf import DictConfig

from raylib import runtime, storage
from raylib.config import Config, ConfigError, to_config


def start(cfg: DictConfig, with_ray: bool = True) -> Config:
    """Log raylib at INFO, check the config, then start or join Ray (which also points storage at the
    configured S3 endpoint); jobs that only stream Parquet in-process set up storage alone."""
    logging.getLogger("raylib").setLevel(logging.INFO)
    try:
        config = to_config(cfg)
    except ConfigError as error:  # one line naming the key, not a traceback
        raise SystemExit(f"error: {error}") from None
    if with_ray:
        runtime.init_ray(config)
    else:
        storage.configure_s3(config.storage.endpoint_url, config.storage.region)
    return config


def require(uri: str, what: str, remedy: str) -> str:
    """`uri`, or exit naming what is missing there and the job that makes it."""
    if not storage.exists(uri):
        raise SystemExit(f"no {what} at {uri}: {remedy}")
    return uri
