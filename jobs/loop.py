"""The main job: run (or resume) the active-learning loop.

    python jobs/loop.py                                  # embedded defaults: local Ray, synthetic pool, CPU
    python jobs/loop.py -m strategy=cls_iou,random seed=0,1   # a sweep; writes outputs/runs/comparison/
    ray job submit --working-dir . -- python jobs/loop.py experiment=voc07_12   # the seed's experiment
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import runtime
from raylib.config import to_config
from raylib.loop import run_loop


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    runtime.init_ray(config)
    run_loop(config)


if __name__ == "__main__":
    main()
