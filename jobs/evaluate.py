"""Evaluate one round's model as the loop's evaluate stage does: VOC AP50 per class and mAP50 on the
fixed performance test set and on the labelled set's `test` split, and loc_conf's calibration on `val`.

    python jobs/evaluate.py round_idx=2      # after jobs/train.py (or the loop) trained round 2
"""
import hydra
from _job import run, run_alone, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg, with_ray=False)
    _, rp = run_alone(config, "evaluate", lambda rp: [(
        rp.weights, "weights", f"run `python jobs/train.py round_idx={config.round_idx}` first")])
    print(f"metrics: {rp.metrics}, {rp.metrics_test}\ncalibration: {rp.calibration_summary}, {rp.calibration}")


if __name__ == "__main__":
    run(main, __doc__)
