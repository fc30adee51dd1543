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
        hint = ("; scripts/get_pretrained.sh installs the pretrained YOLOX-tiny there"
                if uri.endswith("yolox_tiny_camera_traps.pth") else "")
        raise FileNotFoundError(f"weights '{uri}' not found (model.weights){hint}") from exc
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


class WithEmbedding(torch.nn.Module):
    """YOLOX in eval mode that also returns one embedding per image: the neck's P3, P4 and P5 maps (what
    the head reads), each averaged over its positions, concatenated ([n, 448] for nano, [n, 896] for s).

    Diversity strategies (`strategies.DIVERSE`) compare images by its direction (the scorer stores it
    scaled to unit length, in float16); it costs three means on maps the
    forward pass computes anyway. Its forward is YoloxModule.forward's eval branch with the neck kept."""

    def __init__(self, yolox: YoloxModule):
        super().__init__()
        self.yolox = yolox

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neck = self.yolox.backbone(x)
        return self.yolox.head(neck), torch.cat([level.mean(dim=(2, 3)) for level in neck], dim=1)


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


def letterbox_on_device(images_bgr: list[torch.Tensor], side: int) -> tuple[torch.Tensor, list[float]]:
    """`letterbox` for [3, H, W] uint8 tensors already on the model's device -> float [B, 3, side, side]
    in 0..255 (the model's input, as `to_input` makes it) and each image's ratio. Bilinear without
    antialiasing and half-pixel centres, as cv2.INTER_LINEAR, rounded as cv2 rounds to uint8 (pixels
    within a grey level of OpenCV's). Images of one size are resized in one call (photos from one
    camera or dataset mostly share a few sizes)."""
    canvas = torch.full((len(images_bgr), 3, side, side), float(PAD_VALUE),
                        device=images_bgr[0].device if images_bgr else "cpu")
    ratios = [min(side / image.shape[1], side / image.shape[2]) for image in images_bgr]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images_bgr):
        by_size.setdefault(tuple(image.shape[1:]), []).append(i)
    for (height, width), members in by_size.items():
        ratio = ratios[members[0]]
        new_height, new_width = int(height * ratio), int(width * ratio)
        pixels = torch.stack([images_bgr[i] for i in members]).float()
        if (new_height, new_width) != (height, width):
            pixels = torch.nn.functional.interpolate(pixels, size=(new_height, new_width), mode="bilinear",
                                                     align_corners=False, antialias=False).round_()
        canvas[members, :, :new_height, :new_width] = pixels
    return canvas, ratios


@dataclass
class ImageDetections:
    """Detections of one image, boxes in original image pixels."""

    class_id: np.ndarray  # int16 [n]
    cls_conf: np.ndarray  # float32 [n], max class probability
    loc_conf: np.ndarray  # float32 [n], YOLOX objectness (predicted IoU / localization confidence)
    boxes: np.ndarray  # float32 [n, 4] x1 y1 x2 y2
    class_probs: np.ndarray  # float32 [n, num_classes]


@dataclass
class BatchDetections(ImageDetections):
    """Detections of a batch of images as flat arrays: row i belongs to image `image_index[i]` of the
    batch. Rows are grouped by image (ascending), and by decreasing `cls_conf * loc_conf` within one."""

    image_index: np.ndarray  # int64 [n]

    def counts(self, n_images: int) -> np.ndarray:
        return np.bincount(self.image_index, minlength=n_images)

    def per_image(self, n_images: int) -> list[ImageDetections]:
        bounds = np.concatenate([[0], np.cumsum(self.counts(n_images))])
        return [ImageDetections(class_id=self.class_id[a:b], cls_conf=self.cls_conf[a:b], loc_conf=self.loc_conf[a:b],
                                boxes=self.boxes[a:b], class_probs=self.class_probs[a:b])
                for a, b in zip(bounds[:-1], bounds[1:])]


# Boxes per NMS call. One call over many (image, class) groups is one kernel launch on a GPU, but
# NMS compares the boxes of a call with each other (torchvision's CUDA kernel builds an n^2 bit mask
# and reduces it on the host; the CPU loop costs n x kept), so the groups of a batch are cut into
# calls of about this many boxes. At 32,768 on an H200 the worst case (every anchor a candidate) ran
# 3x slower than per-image NMS.
NMS_CHUNK_BOXES = {"cuda": 4_096, "cpu": 256}


def decode_batch(
    outputs: torch.Tensor,
    ratios: torch.Tensor | list[float],
    sizes: torch.Tensor | list[tuple[int, int]],
    candidate_conf: float = 0.01,
    nms_threshold: float = 0.45,
    max_detections: int = 100,
) -> BatchDetections:
    """YOLOX eval output `[B, anchors, 5 + C]` (cx, cy, w, h in input pixels; objectness and class
    probabilities sigmoided) -> the batch's detections in original pixels (`sizes` are (height, width)),
    clipped to the image (boxes left under `MIN_BOX_SIDE` a side dropped), after class-aware NMS per
    image, at most `max_detections` per image.

    The whole batch is post-processed at once on the outputs' device: one candidate filter, one box
    conversion, NMS over (image, class) groups in a few calls, and one device-to-host copy. We don't use
    `yolox.utils.postprocess`: it keeps only the top class (margin/entropy need all class
    probabilities), loops over images and writes into its input.
    """
    outputs = outputs.detach().float()
    device, (n_images, _, width) = outputs.device, outputs.shape
    num_classes = width - 5
    # Boxes are clipped to their image, so the largest image side bounds every coordinate: NMS's group
    # shift read from the (host) sizes, not from the boxes, costs no device-to-host sync.
    extent = float(torch.as_tensor(sizes, dtype=torch.float32).max()) if n_images else 0.0
    ratios = torch.as_tensor(ratios, dtype=torch.float32, device=device)
    sizes = torch.as_tensor(sizes, dtype=torch.float32, device=device).reshape(n_images, 2)
    cls_conf, class_id = outputs[..., 5:].max(dim=2)
    image_index, anchor = torch.nonzero(outputs[..., 4] * cls_conf >= candidate_conf, as_tuple=True)
    pred, cls_conf, class_id = outputs[image_index, anchor], cls_conf[image_index, anchor], class_id[image_index, anchor]
    half_wh = pred[:, 2:4] / 2
    boxes = torch.cat([pred[:, :2] - half_wh, pred[:, :2] + half_wh], dim=1) / ratios[image_index, None]
    upper = sizes[image_index].flip(1).repeat(1, 2)  # (width, height, width, height) of each box's image
    boxes = torch.minimum(boxes.clamp(min=0), upper)
    # A box in the letterbox padding clips to a line on the image edge: no object an annotator
    # could check, and an empty box that VOC readers (ours included) refuse.
    visible = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
    image_index, pred, cls_conf, class_id, boxes = (
        image_index[visible], pred[visible], cls_conf[visible], class_id[visible], boxes[visible])
    kept = _nms_per_image_and_class(boxes, pred[:, 4] * cls_conf, image_index, class_id, n_images,
                                    num_classes, nms_threshold, max_detections, extent)
    rows = torch.cat([image_index[kept, None].float(), class_id[kept, None].float(), cls_conf[kept, None],
                      pred[kept, 4:5], boxes[kept], pred[kept, 5:]], dim=1).cpu().numpy()
    return BatchDetections(image_index=rows[:, 0].astype(np.int64), class_id=rows[:, 1].astype(np.int16),
                           cls_conf=rows[:, 2].copy(), loc_conf=rows[:, 3].copy(),
                           boxes=np.ascontiguousarray(rows[:, 4:8]), class_probs=np.ascontiguousarray(rows[:, 8:]))


def _nms_per_image_and_class(boxes: torch.Tensor, scores: torch.Tensor, image_index: torch.Tensor,
                             class_id: torch.Tensor, n_images: int, num_classes: int, nms_threshold: float,
                             max_detections: int, extent: float) -> torch.Tensor:
    """Indices of the boxes NMS keeps within each (image, class) group, at most `max_detections` per
    image, grouped by image and by decreasing score within one.

    Groups are kept apart by shifting each group's boxes to its own region, `extent` (no coordinate is
    larger) + 1 apart (as torchvision's batched_nms does per class), in float64: the shifts of a whole
    batch would eat float32's mantissa."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    group = image_index * num_classes + class_id
    order = torch.argsort(group, stable=True)
    group_sizes = torch.unique_consecutive(group[order], return_counts=True)[1].cpu().numpy()
    # Whole groups per call: a call starts at the first group that begins past the next multiple of
    # the chunk size (a group larger than a chunk gets a call of its own).
    limit = NMS_CHUNK_BOXES.get(boxes.device.type, NMS_CHUNK_BOXES["cuda"])
    group_starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    chunk_of_group = group_starts // limit
    bounds = np.concatenate([group_starts[np.flatnonzero(np.diff(chunk_of_group)) + 1], [len(boxes)]]).tolist()
    shifted = boxes.double()[order] + (group[order].double() * (extent + 1.0))[:, None]
    sorted_scores = scores.double()[order]  # nms wants one dtype; float32 -> float64 keeps the order
    kept, start = [], 0
    for end in bounds:
        kept.append(order[torchvision.ops.nms(shifted[start:end], sorted_scores[start:end], nms_threshold) + start])
        start = end
    kept = torch.cat(kept)
    # By decreasing score, then (stable) by image: each image's boxes in nms's order; rank within image.
    kept = kept[torch.argsort(scores[kept], descending=True, stable=True)]
    kept = kept[torch.argsort(image_index[kept], stable=True)]
    per_image = torch.bincount(image_index[kept], minlength=n_images)
    rank = torch.arange(len(kept), device=kept.device) - (torch.cumsum(per_image, 0) - per_image)[image_index[kept]]
    return kept[rank < max_detections]


def decode(outputs: torch.Tensor, ratios: list[float], sizes: list[tuple[int, int]], candidate_conf: float = 0.01,
           nms_threshold: float = 0.45, max_detections: int = 100) -> list[ImageDetections]:
    """`decode_batch`, split per image."""
    return decode_batch(outputs, ratios, sizes, candidate_conf, nms_threshold,
                        max_detections).per_image(outputs.shape[0])


def to_input(batch_hwc_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] BGR -> float [B, 3, H, W] in 0..255, as YOLOX was trained (no normalisation)."""
    return batch_hwc_uint8.permute(0, 3, 1, 2).float()
