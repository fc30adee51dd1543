"""The evaluate stage: VOC AP50 (`raylib.metrics`) of a trained model on one split of a labelled set.

    metrics = evaluate_split(cfg.eval, cfg.model, weights_uri, labels_uri, manifest_uri, "perf_test",
                             out_uri, class_names, max_pixels)
    perf, test = on_device(cfg.eval, [(evaluate_split, args_perf), (evaluate_split, args_test)])

Detections come from `raylib.detect` (the scoring decoder, YOLOX's VOC evaluation thresholds). The stage
runs each split in a Ray task (`on_device`): the split's labels, images, detections and matching stay
on the task's node and device, and the driver gets the metrics JSON's dict.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylib import labels, runtime, storage
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


def on_device(ec: EvalConfig, calls: Sequence[tuple[Callable[..., Any], tuple]]) -> list[Any]:
    """`fn(*args)` of every call, each in its own Ray task, all submitted at once; results in order.

    A task holds `eval.num_cpus` CPUs (its torch threads) and, with a GPU (`eval.use_gpu`, or by default
    when the cluster has one), one GPU. Nothing but the results comes back to the driver. Without Ray
    (a library call), here, one after another."""
    import ray

    if not ray.is_initialized():
        return [fn(*args) for fn, args in calls]
    task = ray.remote(num_cpus=ec.num_cpus, num_gpus=1 if _use_gpu(ec) else 0)(_call)
    return ray.get([task.remote(fn, args, ec.num_cpus) for fn, args in calls])


def _call(fn: Callable[..., Any], args: tuple, num_cpus: float) -> Any:
    torch.set_num_threads(runtime.cpu_threads(num_cpus, None))
    return fn(*args)


def detect_split(ec: EvalConfig, model_cfg: ModelConfig, weights_uri: str, items: list[tuple[str, str]],
                 num_classes: int, max_pixels: int) -> tuple[pd.DataFrame, list[str]]:
    """Detections of `weights_uri` on the (image_id, uri) `items` of a labelled split (detect.FRAME_COLUMNS) and
    the ids that could not be read: the one path of the evaluate stage (AP50, calibration), in batches of
    `eval.batch_size`, on the GPU Ray gave this task (none: the CPU; outside Ray, a GPU if there is one)."""
    model = load_model(model_cfg.size, num_classes, weights_uri).to(_device()).eval()
    return detect_images(model, items, model_cfg.input_size, max_pixels, ec.batch_size, _device())


def _use_gpu(ec: EvalConfig) -> bool:
    import ray

    if ec.use_gpu is None:
        return ray.cluster_resources().get("GPU", 0) > 0
    return ec.use_gpu


def _device() -> torch.device:
    import ray

    if ray.is_initialized():  # a task Ray gave no GPU must not take one it finds
        return torch.device("cuda" if ray.get_gpu_ids() else "cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
