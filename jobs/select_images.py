"""Select the images to label from a round's detections (per-class bottom-k, seed pseudo-code 2).

    python jobs/select_images.py strategy.k=50 strategy.budget=300 round_idx=2    # after jobs/score.py

Not select.py: a script's folder is first on sys.path, and it would shadow the standard `select`.
"""
import hydra
from _job import require, start
from omegaconf import DictConfig

from raylib.paths import RoundPaths
from raylib.select import select_round


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg, with_ray=False)  # selection streams Parquet in this process
    rp = RoundPaths(config.run_root, config.round_idx)
    detections = require(rp.detections, "detections", f"run jobs/score.py round_idx={config.round_idx} first")
    summary = select_round(detections, config.strategy, config.round_idx, rp, len(config.data.class_names))
    print(f"selected {summary.n_images} images from {summary.n_candidates} candidate detections")
    print(f"selection: {rp.selection}\nthresholds: {rp.thresholds}")


if __name__ == "__main__":
    main()
