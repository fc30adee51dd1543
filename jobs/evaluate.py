"""Evaluate one round's model (VOC AP50 per class, mAP50) on the fixed performance test set.

    python jobs/evaluate.py round_idx=2      # after jobs/train.py (or the loop) trained round 2

The test set's ground truth is read from its VOC files once. Output: `round=NN/metrics.json`.
"""
import hydra
from _job import require, start
from omegaconf import DictConfig

from raylib import labels, runtime
from raylib.evaluate import evaluate_split
from raylib.paths import RoundPaths


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = start(cfg)
    ds, rp = runtime.ensure_dataset(config), RoundPaths(config.run_root, config.round_idx)
    weights = require(rp.weights, "weights", f"run `python jobs/train.py round_idx={config.round_idx}` first")
    metrics = evaluate_split(config.eval, config.model, weights, labels.perf_test_labels(config.run_root, ds),
                             ds.test_manifest, "perf_test", rp.metrics, ds.class_names, config.score.max_pixels)
    print(f"mAP50 {metrics['map50']} ({metrics['n_failed']} failed); per class {metrics['ap50_per_class']}")
    print(f"metrics: {rp.metrics}")


if __name__ == "__main__":
    main()
