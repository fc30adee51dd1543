"""Score the unlabelled pool of round `round_idx` with Ray Data, as the loop's score stage does.

    python jobs/score.py                                 # after jobs/train.py on the embedded defaults
    python jobs/score.py model.weights=s3://bucket/w.pt score=gpu cluster=gpu4

Weights: `model.weights` if given, else the round's trained `round=NN/train/model.pt`.
Pool: the round's `unlabelled.parquet` when the loop wrote one, else the whole pool manifest.
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import runtime, storage
from raylib.config import to_config
from raylib.paths import RoundPaths
from raylib.score import score_pool


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    runtime.init_ray(config)  # also points storage at the configured S3 endpoint
    ds = runtime.ensure_dataset(config)
    rp = RoundPaths(config.run_root, config.round_idx)
    weights = config.model.weights or rp.weights
    if not storage.exists(weights):
        raise SystemExit(f"no weights at {weights}: run jobs/train.py round_idx={config.round_idx} first, "
                         "or pass model.weights=<path or s3:// URI>")
    unlabelled = storage.join(rp.root, "unlabelled.parquet")
    manifest = unlabelled if storage.exists(unlabelled) else ds.pool_manifest
    summary = score_pool(manifest, weights, rp, config, ds.class_names)
    print(f"scored {summary.n_images} images from {manifest} ({summary.n_ok} ok, {summary.n_error} errors), "
          f"{summary.n_detections} detections kept")
    print(f"detections: {rp.detections}\nimage status: {rp.image_status}")


if __name__ == "__main__":
    main()
