"""YOLOX from the `yolox` package (pixeltable-yolox): build by size, save/load weights, decode outputs.

Weights are a plain dict `{"model": state_dict, "size": str, "num_classes": int, "class_names": [...]}`
loaded with `torch.load(..., weights_only=True)`: no pickled code runs. Nothing here downloads.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torchvision
from yolox.config import YoloxConfig
from yolox.models import YoloxModule

from raylib import storage
from raylib.config import MODEL_SIZES

log = logging.getLogger(__name__)

PAD_VALUE = 114  # YOLOX's letterbox fill (yolox.data.data_augment.preproc)
MIN_BOX_SIDE = 1.0  # original-image pixels; smaller boxes (after clipping to the image) are dropped


def build_model(size: str, num_classes: int) -> YoloxModule:
    """A freshly initialised YOLOX of `size` (nano..x) for `num_classes` classes, in train mode."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown YOLOX size '{size}'; choose one of {MODEL_SIZES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    exp = YoloxConfig.get_named_config(f"yolox_{size}")
    exp.num_classes = num_classes
    return exp.get_model()


def save_weights(model: torch.nn.Module, uri: str, size: str, class_names: list[str]) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {"model": state, "size": size, "num_classes": len(class_names), "class_names": list(class_names)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def read_weights(uri: str) -> dict:
    """Load a weights file safely. Accepts our format and the yolox package's `{"model": ...}` files."""
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"weights '{uri}' not found") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"weights '{uri}' could not be loaded safely: {type(exc).__name__}") from exc
    if isinstance(payload, dict) and "model" in payload:
        return payload
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"model": payload}
    raise ValueError(f"weights '{uri}' is not a YOLOX state dict")


def load_weights(model: torch.nn.Module, uri: str) -> list[str]:
    """Load `uri` into `model`; tensors whose shape differs (the class head, when the class count
    changed: transfer learning, seed 6.3) keep their fresh initialisation. Returns the skipped keys."""
    state = read_weights(uri)["model"]
    target = unwrap(model).state_dict()
    unknown = [k for k in state if k not in target]
    if unknown:
        raise ValueError(f"weights '{uri}' do not fit this model: unknown keys such as {unknown[:3]}")
    skipped = [k for k, v in state.items() if v.shape != target[k].shape]
    if any(not k.startswith("head.cls_preds.") for k in skipped):
        bad = [k for k in skipped if not k.startswith("head.cls_preds.")]
        raise ValueError(f"weights '{uri}' are for another model size: shape mismatch at {bad[:3]}")
    target.update({k: v for k, v in state.items() if k not in skipped})
    unwrap(model).load_state_dict(target)
    if skipped:
        log.info("weights %s: class head re-initialised (%d tensors, different class count)", uri, len(skipped))
    return skipped


def load_model(size: str, num_classes: int, weights: str | None) -> YoloxModule:
    model = build_model(size, num_classes)
    if weights:
        load_weights(model, weights)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def letterbox(image_bgr: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """Resize keeping aspect ratio into a `side` x `side` uint8 canvas padded with 114, top-left
    aligned: the same geometry as `yolox.data.data_augment.preproc`, but kept as uint8 HWC so that
    batches stay 4x smaller on their way to the model."""
    height, width = image_bgr.shape[:2]
    ratio = min(side / height, side / width)
    resized = cv2.resize(image_bgr, (int(width * ratio), int(height * ratio)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((side, side, 3), PAD_VALUE, dtype=np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, ratio


@dataclass
class ImageDetections:
    """Detections of one image, boxes in original image pixels."""

    class_id: np.ndarray  # int16 [n]
    cls_conf: np.ndarray  # float32 [n], max class probability
    loc_conf: np.ndarray  # float32 [n], YOLOX objectness (predicted IoU / localization confidence)
    boxes: np.ndarray  # float32 [n, 4] x1 y1 x2 y2
    class_probs: np.ndarray  # float32 [n, num_classes]


def decode(
    outputs: torch.Tensor,
    ratios: list[float],
    sizes: list[tuple[int, int]],
    candidate_conf: float = 0.01,
    nms_threshold: float = 0.45,
    max_detections: int = 100,
) -> list[ImageDetections]:
    """YOLOX eval output `[B, anchors, 5 + C]` (cx, cy, w, h in input pixels; objectness and class
    probabilities sigmoided) -> per-image detections in original pixels, clipped to the image (boxes
    left under `MIN_BOX_SIDE` a side dropped), after class-aware NMS.

    We don't use `yolox.utils.postprocess`: it keeps only the top class (margin/entropy need all
    class probabilities) and writes into its input.
    """
    outputs = outputs.detach().float()
    results = []
    for i in range(outputs.shape[0]):
        pred = outputs[i]
        loc_conf = pred[:, 4]
        class_probs = pred[:, 5:]
        cls_conf, class_id = class_probs.max(dim=1)
        keep = (loc_conf * cls_conf) >= candidate_conf
        pred, loc_conf, cls_conf, class_id, class_probs = (
            pred[keep], loc_conf[keep], cls_conf[keep], class_id[keep], class_probs[keep]
        )
        boxes = torch.stack(
            [pred[:, 0] - pred[:, 2] / 2, pred[:, 1] - pred[:, 3] / 2,
             pred[:, 0] + pred[:, 2] / 2, pred[:, 1] + pred[:, 3] / 2], dim=1
        ) / ratios[i]
        height, width = sizes[i]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        # A box in the letterbox padding clips to a line on the image edge: no object an annotator
        # could check, and an empty box that VOC readers (ours included) refuse.
        visible = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
        boxes, loc_conf, cls_conf, class_id, class_probs = (
            boxes[visible], loc_conf[visible], cls_conf[visible], class_id[visible], class_probs[visible]
        )
        kept = torchvision.ops.batched_nms(boxes, loc_conf * cls_conf, class_id, nms_threshold)[:max_detections]
        boxes = boxes[kept]
        results.append(
            ImageDetections(
                class_id=class_id[kept].cpu().numpy().astype(np.int16),
                cls_conf=cls_conf[kept].cpu().numpy().astype(np.float32),
                loc_conf=loc_conf[kept].cpu().numpy().astype(np.float32),
                boxes=boxes.cpu().numpy().astype(np.float32),
                class_probs=class_probs[kept].cpu().numpy().astype(np.float32),
            )
        )
    return results


def to_input(batch_hwc_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] BGR -> float [B, 3, H, W] in 0..255, as YOLOX was trained (no normalisation)."""
    return batch_hwc_uint8.permute(0, 3, 1, 2).float()
