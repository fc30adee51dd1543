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
from raylib.metrics import BOX, DETECTION_COLUMNS
from raylib.model import BatchDetections, decode_batch, letterbox, to_input

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
            device: torch.device | str = "cpu") -> BatchDetections:
    """Run `model` (eval mode) on BGR images letterboxed to `input_size`: the batch's detections as flat
    arrays (`image_index` into `batch`), boxes in original pixels."""
    canvases, ratios = zip(*(letterbox(image, input_size) for image in batch))
    outputs = model(to_input(torch.from_numpy(np.stack(canvases)).to(device)))
    return decode_batch(outputs, list(ratios), [image.shape[:2] for image in batch],
                        candidate_conf=EVAL_CANDIDATE_CONF, nms_threshold=EVAL_NMS_THRESHOLD,
                        max_detections=EVAL_MAX_DETECTIONS)


def detect_images(model: torch.nn.Module, items: Iterable[tuple[str, str]], input_size: int, max_pixels: int | None,
                  batch_size: int = 16, device: torch.device | str = "cpu",
                  read_threads: int = 4) -> tuple[pd.DataFrame, list[str]]:
    """Detections of every (image_id, uri) in `items`, fetching the next batch while one is computed.

    Returns (detections frame with FRAME_COLUMNS, ids of images that failed to read or decode). A batch's
    detections stay arrays until the end: one frame is built, not one per image."""
    was_training = model.training
    model.eval()
    columns: dict[str, list[np.ndarray]] = {name: [] for name in FRAME_COLUMNS}
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
            failed += [image_id for (image_id, _), image in zip(batch, decoded) if image is None]
            ok = [(image_id, image) for (image_id, _), image in zip(batch, decoded) if image is not None]
            if ok:
                _append(columns, np.array([image_id for image_id, _ in ok], dtype=object),
                        predict(model, [image for _, image in ok], input_size, device))
    model.train(was_training)
    if not columns["image_id"]:
        return pd.DataFrame(columns=FRAME_COLUMNS), failed
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()}), failed


def _append(columns: dict[str, list[np.ndarray]], image_ids: np.ndarray, dets: BatchDetections) -> None:
    columns["image_id"].append(image_ids[dets.image_index])
    columns["class_id"].append(dets.class_id.astype(np.int64))
    columns["score"].append((dets.cls_conf * dets.loc_conf).astype(np.float64))
    for i, name in enumerate(BOX):
        columns[name].append(dets.boxes[:, i])
    columns["cls_conf"].append(dets.cls_conf.astype(np.float64))
    columns["loc_conf"].append(dets.loc_conf.astype(np.float64))


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Detection frames as one (an empty one with FRAME_COLUMNS when there are none)."""
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FRAME_COLUMNS)

