"""Where a run stands: each round's stages with their durations, mAP50 per round, what is pending.

    python jobs/status.py run_root=outputs/runs/synthetic_nano/cls_iou_seed0
    python jobs/status.py experiment=demo          # the run root the same overrides give jobs/loop.py
"""
import hydra
from _job import run, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from raylib.status import format_status, run_status

    run_root = start(cfg, with_ray=False).run_root
    print(format_status(run_root, *run_status(run_root)))


if __name__ == "__main__":
    run(main, __doc__)
