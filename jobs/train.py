"""Train one round's model alone (Ray Train), as the loop's train stage does.

    python jobs/train.py                                   # embedded defaults: synthetic pool, CPU, nano
    ray job submit --working-dir . -- python jobs/train.py cluster=gpu4 model=yolox_s train=gpu round_idx=0

Labels: those round `round_idx` trains on in the loop, else every pool image with its VOC labels.
"""
import hydra
from _job import start
from omegaconf import DictConfig

from raylib import labels, runtime
from raylib.paths import RoundPaths
from raylib.train import train_model


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg)
    ds, out_dir = runtime.ensure_dataset(config), RoundPaths(config.run_root, config.round_idx).checkpoint
    labels_uri = labels.labels_for_round(config.run_root, config.round_idx, ds, config.loop.split, config.seed)
    result = train_model(config, labels_uri, ds.pool_manifest, out_dir, ds.class_names,
                         init_weights=config.model.weights, max_pixels=config.score.max_pixels)
    print(f"labels: {labels_uri}\nbest val mAP50 {result.best_map50} at epoch {result.best_epoch} of {result.epochs}")
    print(f"weights: {result.weights_uri}\ncheckpoints: {result.run_path}")


if __name__ == "__main__":
    main()
