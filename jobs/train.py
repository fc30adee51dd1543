"""Train one round's model alone (Ray Train), as the loop's train stage does.

    python jobs/train.py                                   # embedded defaults: synthetic pool, CPU, nano
    python jobs/train.py train.epochs=30 round_idx=0       # Hydra overrides
    ray job submit --working-dir . -- python jobs/train.py cluster=gpu4 model=yolox_s train=gpu

Input: the labelled set round `round_idx` trains on (the seed labels for round 0, else the previous
round's labels); without one (standalone use), every pool image with its VOC labels, split 70/15/15,
in `<run_root>/labels_standalone.parquet`. Output: `<run_root>/round=NN/train/model.pt`.
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import runtime
from raylib.config import to_config
from raylib.paths import RoundPaths
from raylib.train import round_labels, standalone_labels, train_model


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    runtime.init_ray(config)
    ds = runtime.ensure_dataset(config)
    labels_uri = round_labels(config.run_root, config.round_idx) or standalone_labels(
        config, ds.pool_manifest, ds.voc_root, ds.class_names)
    out_dir = RoundPaths(config.run_root, config.round_idx).checkpoint
    result = train_model(config, labels_uri, ds.pool_manifest, out_dir, ds.class_names,
                         init_weights=config.model.weights)
    print(f"labels: {labels_uri}")
    print(f"trained {result.epochs} epoch(s); best val mAP50 {result.best_map50} at epoch {result.best_epoch}")
    print(f"weights: {result.weights_uri}")
    print(f"checkpoints: {result.run_path}")


if __name__ == "__main__":
    main()
