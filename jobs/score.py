"""Score the unlabelled pool of round `round_idx` with Ray Data, as the loop's score stage does.

    python jobs/score.py                                 # after jobs/train.py on the embedded defaults
    python jobs/score.py model.weights=s3://bucket/w.pt score=gpu cluster=gpu4

Weights: `model.weights`, else the round's. Pool: the round's unlabelled manifest, else the whole pool.
"""
import hydra
from _job import require, start
from omegaconf import DictConfig

from raylib import pool, runtime
from raylib.paths import RoundPaths
from raylib.score import score_pool


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg)
    ds, rp = runtime.ensure_dataset(config), RoundPaths(config.run_root, config.round_idx)
    weights = require(config.model.weights or rp.weights, "weights", f"run jobs/train.py round_idx="
                      f"{config.round_idx} first, or pass model.weights=<path or s3:// URI>")
    summary = score_pool(pool.round_pool(rp, ds.pool_manifest), weights, rp, config, ds.class_names)
    print(f"scored: {summary}\ndetections: {rp.detections}\nimage status: {rp.image_status}")


if __name__ == "__main__":
    main()
