"""The evaluate stage: VOC AP50 (`raylib.metrics`) of a trained model on one split of a labelled set.

    metrics = evaluate_split(cfg.eval, cfg.model, weights_uri, labels_uri, manifest_uri, "perf_test",
                             out_uri, class_names, max_pixels)

Detections come from `raylib.detect` (the scoring decoder, YOLOX's VOC evaluation thresholds).
"""
from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylib import labels, storage
from raylib.config import EvalConfig, ModelConfig
from raylib.detect import detect_images
from raylib.metrics import ap50_per_class, labels_to_ground_truth
from raylib.model import load_model

log = logging.getLogger(__name__)

MAX_FAILED_LISTED = 20  # failed image ids written to the metrics JSON (the count is always complete)


def evaluate_split(ec: EvalConfig, model_cfg: ModelConfig, weights_uri: str, labels_uri: str, manifest_uri: str,
                   split: str, out_uri: str, class_names: list[str], max_pixels: int) -> dict:
    """AP50 of `weights_uri` on the labelled images of `split`; writes and returns the metrics JSON.

    Images that can't be read or decoded (or are over `max_pixels`), and labelled ids missing from the
    manifest, are counted in `n_failed`, listed (first 20) in `failed_images`, and their ground truth is
    left out: the metric describes the model on the images it could see. With a GPU (`ec.use_gpu`, or
    by default when the Ray cluster has one) the model runs in a Ray task holding one; else here.
    """
    split_labels, items, missing = labels.read_split(labels_uri, manifest_uri, split)
    if missing:
        log.warning("%d %s image(s) are not in manifest %s, e.g. %s; counted as failed",
                    len(missing), split, manifest_uri, missing[:3])
    detections, unreadable = detect_split(ec, model_cfg, weights_uri, items, len(class_names), max_pixels)
    failed = missing + unreadable
    if failed:
        split_labels = split_labels.filter(
            pc.invert(pc.is_in(split_labels.column("image_id"), pa.array(failed, pa.string()))))
    result = ap50_per_class(detections, labels_to_ground_truth(split_labels), len(class_names))
    metrics = {
        "map50": None if math.isnan(result["map50"]) else result["map50"],
        "ap50_per_class": dict(zip(class_names, result["ap50"])),
        "n_gt_per_class": dict(zip(class_names, result["n_gt"])),
        "n_images": len(items) - len(unreadable),  # images the model ran on
        "n_failed": len(failed),
        "failed_images": failed[:MAX_FAILED_LISTED],
        "n_detections": len(detections),
        "split": split,
        "weights": weights_uri,
    }
    storage.write_text(out_uri, json.dumps(metrics, indent=2))
    return metrics


def detect_split(ec: EvalConfig, model_cfg: ModelConfig, weights_uri: str, items: list[tuple[str, str]],
                 num_classes: int, max_pixels: int) -> tuple[pd.DataFrame, list[str]]:
    """Detections of `weights_uri` on the (image_id, uri) `items` of a labelled split (detect.FRAME_COLUMNS) and
    the ids that could not be read: the one path of the evaluate stage (AP50, calibration). With a GPU
    (`ec.use_gpu`, or by default when the Ray cluster has one) the model runs in a Ray task holding one;
    else here, in batches of `eval.batch_size`."""
    args = (model_cfg, weights_uri, items, num_classes, ec.batch_size, max_pixels)
    if _use_gpu(ec):
        import ray

        return ray.get(ray.remote(num_gpus=1, num_cpus=1)(_detect).remote(*args))
    return _detect(*args)


def _use_gpu(ec: EvalConfig) -> bool:
    import ray

    if not ray.is_initialized():
        return False
    if ec.use_gpu is None:
        return ray.cluster_resources().get("GPU", 0) > 0
    return ec.use_gpu


def _detect(model_cfg: ModelConfig, weights_uri: str, items: list[tuple[str, str]], num_classes: int,
            batch_size: int, max_pixels: int) -> tuple[pd.DataFrame, list[str]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_cfg.size, num_classes, weights_uri).to(device).eval()
    return detect_images(model, items, model_cfg.input_size, max_pixels, batch_size, device)
