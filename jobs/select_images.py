"""Select the images to label from a round's detections, as the loop's select stage does: per-class
bottom-k (seed pseudo-code 2), or every image left in the round before the last (seed 6.6).

    python jobs/select_images.py strategy.k=50 strategy.budget=300 round_idx=2    # after jobs/score.py

Not select.py: a script's folder is first on sys.path, and it would shadow the standard `select`.
"""
import hydra
from _job import run, run_alone, start
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg, with_ray=False)  # selection streams Parquet in this process
    _, rp = run_alone(config, "select", lambda rp: [(
        rp.detections, "detections", f"run jobs/score.py round_idx={config.round_idx} first")], with_ray=False)
    print(f"selection: {rp.selection}\nthresholds: {rp.thresholds}")


if __name__ == "__main__":
    run(main, __doc__)
