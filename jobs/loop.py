"""The main job: run (or resume) the active-learning loop.

    python jobs/loop.py                                  # embedded defaults: local Ray, synthetic pool, CPU
    python jobs/loop.py -m strategy=cls_iou,random seed=0,1   # a sweep; writes outputs/runs/comparison/
    ray job submit --working-dir . -- python jobs/loop.py experiment=voc07_12   # the seed's experiment
"""
import hydra
from _job import start
from omegaconf import DictConfig

from raylib.loop import run_loop


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_loop(start(cfg))


if __name__ == "__main__":
    main()
