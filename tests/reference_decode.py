"""The per-image post-process that `model.decode_batch` replaced, kept as its oracle (tests) and its
baseline (benchmarks/score_throughput.py): one image at a time, torchvision's `batched_nms` per image,
five device-to-host copies per image. Not used by the library."""
from __future__ import annotations

import numpy as np
import torch
import torchvision

from raylib.model import MIN_BOX_SIDE, ImageDetections


def decode_per_image(outputs: torch.Tensor, ratios: list[float], sizes: list[tuple[int, int]],
                     candidate_conf: float = 0.01, nms_threshold: float = 0.45,
                     max_detections: int = 100) -> list[ImageDetections]:
    outputs = outputs.detach().float()
    results = []
    for i in range(outputs.shape[0]):
        pred = outputs[i]
        loc_conf, class_probs = pred[:, 4], pred[:, 5:]
        cls_conf, class_id = class_probs.max(dim=1)
        keep = (loc_conf * cls_conf) >= candidate_conf
        pred, loc_conf, cls_conf, class_id, class_probs = (
            pred[keep], loc_conf[keep], cls_conf[keep], class_id[keep], class_probs[keep])
        boxes = torch.stack([pred[:, 0] - pred[:, 2] / 2, pred[:, 1] - pred[:, 3] / 2,
                             pred[:, 0] + pred[:, 2] / 2, pred[:, 1] + pred[:, 3] / 2], dim=1) / ratios[i]
        height, width = sizes[i]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        visible = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        boxes, loc_conf, cls_conf, class_id, class_probs = (
            boxes[visible], loc_conf[visible], cls_conf[visible], class_id[visible], class_probs[visible])
        kept = torchvision.ops.batched_nms(boxes, loc_conf * cls_conf, class_id, nms_threshold)[:max_detections]
        results.append(ImageDetections(
            class_id=class_id[kept].cpu().numpy().astype(np.int16),
            cls_conf=cls_conf[kept].cpu().numpy().astype(np.float32),
            loc_conf=loc_conf[kept].cpu().numpy().astype(np.float32),
            boxes=boxes[kept].cpu().numpy().astype(np.float32),
            class_probs=class_probs[kept].cpu().numpy().astype(np.float32)))
    return results
