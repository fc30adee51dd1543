"""Evaluate one round's model (VOC AP50 per class, mAP50) on the fixed performance test set.

    python jobs/evaluate.py                    # round 0 of the default run root
    python jobs/evaluate.py round_idx=2

Input: `<run_root>/round=NN/train/model.pt` (jobs/train.py or the loop) and the test manifest, whose
ground truth is read from the VOC annotations once into `<run_root>/labels_perf_test.parquet`.
Output: `<run_root>/round=NN/metrics.json`.
"""
import logging

import hydra
from omegaconf import DictConfig

import raylib.config  # noqa: F401  (registers the config schema)
from raylib import runtime, storage
from raylib.config import to_config
from raylib.evaluate import evaluate_split, perf_test_labels
from raylib.paths import RoundPaths


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("raylib").setLevel(logging.INFO)
    config = to_config(cfg)
    runtime.init_ray(config)
    ds = runtime.ensure_dataset(config)
    rp = RoundPaths(config.run_root, config.round_idx)
    if not storage.exists(rp.weights):
        raise SystemExit(f"no weights at {rp.weights}: run `python jobs/train.py round_idx={config.round_idx}` first")
    labels_uri = perf_test_labels(config, ds.voc_root, ds.test_manifest, ds.class_names)
    metrics = evaluate_split(config, rp.weights, labels_uri, ds.test_manifest, "perf_test", rp.metrics,
                             ds.class_names)
    print(f"mAP50 {metrics['map50']} on {metrics['n_images']} test image(s) ({metrics['n_failed']} failed)")
    for name, ap in metrics["ap50_per_class"].items():
        print(f"  AP50 {name}: {ap}")
    print(f"metrics: {rp.metrics}")


if __name__ == "__main__":
    main()
