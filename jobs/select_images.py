"""Select the images to label from a round's detections (per-class bottom-k, seed pseudo-code 2).

Named select_images.py, not select.py: a script's folder comes first on sys.path, and a
jobs/select.py would shadow the standard library's `select` module for every job.

    python jobs/select_images.py                          # after jobs/score.py
    python jobs/select_images.py strategy.k=50 strategy.budget=300 round_idx=2
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import storage
from raylib.config import to_config
from raylib.paths import RoundPaths
from raylib.select import select_round


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    # Selection streams Parquet in this process: no Ray needed, only the storage endpoint.
    storage.configure_s3(config.storage.endpoint_url, config.storage.region)
    rp = RoundPaths(config.run_root, config.round_idx)
    if not storage.exists(rp.detections):
        raise SystemExit(f"no detections at {rp.detections}: run jobs/score.py round_idx={config.round_idx} first")
    summary = select_round(rp.detections, config.strategy, config.round_idx, rp, len(config.data.class_names))
    print(f"selected {summary.n_images} images from {summary.n_candidates} candidate detections")
    print(f"selection: {rp.selection}\nthresholds: {rp.thresholds}")


if __name__ == "__main__":
    main()
