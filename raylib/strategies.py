"""Per-detection informativeness, written to the `score` column. LOWER = MORE INFORMATIVE everywhere,
so every strategy goes through the same per-class bottom-k selection (pseudo-code 2).

- `cls_iou` (the seed, eq. 6.1): cls_conf x loc_conf. A detection the model is unsure of in *what* it
  is or *where* it is scores low.
- `cls_only`: cls_conf alone (classification uncertainty only; the ablation of the seed's idea).
- `loc_only`: loc_conf alone (YOLOX's objectness / predicted-IoU branch only).
- `margin` (Brust et al., 2019, "Active learning for deep object detection"): top-1 minus top-2 class
  probability; a small margin means two classes compete.
- `entropy` (Haussmann et al., 2020, "Scalable active learning for object detection"): 1 - normalised
  entropy of the class probabilities, so a flat (uncertain) distribution scores low.
- `random`: a uniform value from a seeded hash of (image id, detection index): the baseline every
  strategy must beat, deterministic for a given seed.
"""
from __future__ import annotations

import hashlib

import numpy as np

from raylib.config import STRATEGIES


def detection_scores(
    name: str,
    cls_conf: np.ndarray,
    loc_conf: np.ndarray,
    class_probs: np.ndarray | None = None,
    image_ids: list[str] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Score of each detection (float32, in [0, 1]); `class_probs` is [n, C], `image_ids` one per row."""
    cls_conf = np.asarray(cls_conf, dtype=np.float32)
    loc_conf = np.asarray(loc_conf, dtype=np.float32)
    if name == "cls_iou":
        return cls_conf * loc_conf
    if name == "cls_only":
        return cls_conf.copy()
    if name == "loc_only":
        return loc_conf.copy()
    if name in ("margin", "entropy"):
        if class_probs is None:
            raise ValueError(f"strategy '{name}' needs class probabilities (score.keep_class_probs=true)")
        probs = np.asarray(class_probs, dtype=np.float64).reshape(len(cls_conf), -1)
        if name == "margin":
            if probs.shape[1] < 2:
                return np.ones(len(probs), dtype=np.float32)
            top2 = np.sort(probs, axis=1)[:, -2:]
            return (top2[:, 1] - top2[:, 0]).astype(np.float32)
        # YOLOX's class probabilities are independent sigmoids: normalise them into a distribution.
        dist = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
        entropy = -(dist * np.log(np.clip(dist, 1e-12, None))).sum(axis=1)
        return (1.0 - entropy / np.log(max(probs.shape[1], 2))).astype(np.float32)
    if name == "random":
        if image_ids is None:
            raise ValueError("strategy 'random' needs the image id of each detection")
        return _hash_uniform(image_ids, seed)
    raise ValueError(f"unknown strategy '{name}'; choose one of {STRATEGIES}")


def _hash_uniform(image_ids: list[str], seed: int) -> np.ndarray:
    """Uniform (0, 1) per row from (seed, image id, index of the row within its image)."""
    values = np.empty(len(image_ids), dtype=np.float32)
    seen: dict[str, int] = {}
    for row, image_id in enumerate(image_ids):
        index = seen.get(image_id, 0)
        seen[image_id] = index + 1
        digest = hashlib.blake2b(f"{seed}:{image_id}:{index}".encode(), digest_size=8).digest()
        values[row] = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return values


CONFIDENCE_STRATEGIES = ("cls_iou", "cls_only", "loc_only")


def selection_min_score(name: str, min_score: float) -> float:
    """The `score` floor for pseudo-code 2. For confidence-like scores it is `min_score` (0.2). For
    margin/entropy/random the score is not a confidence (a margin of 0.05 is the MOST informative), so
    the floor was applied at scoring time to the detection's confidence (cls_conf x loc_conf) instead,
    and selection keeps every stored row."""
    return min_score if name in CONFIDENCE_STRATEGIES else float("-inf")
