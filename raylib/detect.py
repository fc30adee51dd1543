"""A model's detections on labelled images, for validation during training and for evaluation.

Images are decoded by `decode_bytes`, the decoder scoring uses (`raylib.images`), so training, evaluation
and scoring see the same pixels; an image that can't be read or decoded is reported by id. Bytes may be
fetched in threads, but decoding stays on the calling thread: `images.decode_image` turns warnings into
errors with `warnings.catch_warnings`, which swaps process-wide state and is not thread-safe (decoding
in threads left the filter at "error" for the rest of the process).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from raylib import images
from raylib.metrics import DETECTION_COLUMNS
from raylib.model import ImageDetections, decode, letterbox, to_input

log = logging.getLogger(__name__)

# What detect_images returns: the metric's columns, and the two confidences apart (calibration reads them).
FRAME_COLUMNS = [*DETECTION_COLUMNS, "cls_conf", "loc_conf"]

# YOLOX's own VOC evaluation settings (exps/example/yolox_voc: test_conf 0.01, nmsthre 0.65).
EVAL_CANDIDATE_CONF = 0.01
EVAL_NMS_THRESHOLD = 0.65
EVAL_MAX_DETECTIONS = 100


def decode_bytes(data: bytes, image_id: str, max_pixels: int | None = None) -> np.ndarray:
    """Image bytes as BGR uint8 HWC, by `images.decode_image`. Raises images.ImageError (not decodable,
    over `max_pixels`; None: the decoder's default limit). Call from one thread (module docstring)."""
    if max_pixels is None:
        return images.decode_image(data, image_id)
    return images.decode_image(data, image_id, max_pixels)


def read_image(uri: str, image_id: str, max_pixels: int | None = None) -> np.ndarray:
    """The image at `uri` (local path or s3://), read and decoded as scoring does; raises ImageError."""
    return decode_bytes(images.read_image_bytes(uri, image_id), image_id, max_pixels)


def _read_bytes(item: tuple[str, str]) -> bytes | images.ImageError:
    try:
        return images.read_image_bytes(item[1], item[0])
    except images.ImageError as exc:
        return exc


def _decode_or_none(item: tuple[str, str], data: bytes | images.ImageError,
                    max_pixels: int | None) -> np.ndarray | None:
    image_id, uri = item
    try:
        if isinstance(data, images.ImageError):
            raise data
        return decode_bytes(data, image_id, max_pixels)
    except images.ImageError as exc:
        log.warning("image '%s' (%s) counted as failed, skipped: %s", image_id, uri, exc)
        return None


@torch.no_grad()
def predict(model: torch.nn.Module, batch: Sequence[np.ndarray], input_size: int,
            device: torch.device | str = "cpu") -> list[ImageDetections]:
    """Run `model` (eval mode) on BGR images letterboxed to `input_size`; boxes in original pixels."""
    if not batch:
        return []
    canvases, ratios = zip(*(letterbox(image, input_size) for image in batch))
    outputs = model(to_input(torch.from_numpy(np.stack(canvases)).to(device)))
    return decode(outputs, list(ratios), [image.shape[:2] for image in batch],
                  candidate_conf=EVAL_CANDIDATE_CONF, nms_threshold=EVAL_NMS_THRESHOLD,
                  max_detections=EVAL_MAX_DETECTIONS)


def detect_images(model: torch.nn.Module, items: Iterable[tuple[str, str]], input_size: int, max_pixels: int | None,
                  batch_size: int = 16, device: torch.device | str = "cpu",
                  read_threads: int = 4) -> tuple[pd.DataFrame, list[str]]:
    """Detections of every (image_id, uri) in `items`, fetching the next batch while one is computed.

    Returns (detections frame with FRAME_COLUMNS, ids of images that failed to read or decode)."""
    was_training = model.training
    model.eval()
    frames: list[pd.DataFrame] = []
    failed: list[str] = []
    items = list(items)
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=read_threads) as pool:
        pending = [pool.submit(_read_bytes, item) for item in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            fetched = [future.result() for future in pending]
            if index + 1 < len(batches):
                pending = [pool.submit(_read_bytes, item) for item in batches[index + 1]]
            decoded = [_decode_or_none(item, data, max_pixels) for item, data in zip(batch, fetched)]
            ok = [(image_id, image) for (image_id, _), image in zip(batch, decoded) if image is not None]
            failed += [image_id for (image_id, _), image in zip(batch, decoded) if image is None]
            results = predict(model, [image for _, image in ok], input_size, device)
            frames += [_frame(image_id, dets) for (image_id, _), dets in zip(ok, results)]
    model.train(was_training)
    return concat(frames), failed


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Detection frames as one (an empty one with FRAME_COLUMNS when there are none)."""
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)


def _frame(image_id: str, dets: ImageDetections) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [image_id] * len(dets.class_id),
        "class_id": dets.class_id.astype(np.int64),
        "score": (dets.cls_conf * dets.loc_conf).astype(np.float64),
        "x1": dets.boxes[:, 0], "y1": dets.boxes[:, 1], "x2": dets.boxes[:, 2], "y2": dets.boxes[:, 3],
        "cls_conf": dets.cls_conf.astype(np.float64), "loc_conf": dets.loc_conf.astype(np.float64),
    })
