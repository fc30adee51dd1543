"""Per-detection informativeness, written to the `score` column. LOWER = MORE INFORMATIVE everywhere,
so every strategy goes through the same per-class bottom-k selection (pseudo-code 2, which keeps the
k LOWEST scores of each class).

- `cls_iou` (the seed, eq. 6.1, after Kao et al., 2018, "Localization-aware active learning for object
  detection"): cls_conf x loc_conf. It is a confidence: a detection the model is unsure of in *what* it
  is or *where* it is scores low, so low = informative as it stands.
- `cls_only`: cls_conf alone, least confidence (Settles, 2009; the classification half of the seed's
  product, its ablation). Again a confidence: low = uncertain.
- `loc_only`: loc_conf alone, YOLOX's objectness branch (the localization half). Low = unsure it is a
  well-placed object.
- `margin` (Brust et al., 2019, "Active learning for deep object detection"): top-1 minus top-2 class
  probability. A small margin means two classes compete, so the raw margin already has low = uncertain.
- `entropy` (Haussmann et al., 2020, "Scalable active learning for object detection"): entropy is HIGH
  when uncertain, so we store 1 - entropy / log(C) to turn it around: a flat distribution scores 0.
- `random`: uniform in (0, 1) from a seeded hash of (image id, index of the detection in its image):
  the baseline every strategy must beat; the same seed gives the same values on any batching.

Diversity (issue 26; after PPAL, Yang et al., 2024, and the k-center core set of Sener & Savarese, 2018):
uncertainty alone picks near-duplicates (ten frames of one hard scene) and, on a weak model, loses to
random. A diversity strategy scores detections with its base strategy (`DIVERSE`), keeps a candidate
pool of `strategy.pool_factor` x k per class by the same bottom-k rule, then k-center greedy on the
images' embeddings (`raylib.diversity`) picks k of them per class:
- `cls_iou_diverse`: cls_iou candidates, spread out: the uncertain images, not ten copies of one.
- `kcenter`: random candidates (per class, as random's), spread out: diversity alone, the ablation.

Margin, entropy and random are not confidences, so the seed's floor (confidence > min_score,
pseudo-code 1) is applied to cls_conf x loc_conf when scoring, never to these scores
(`selection_min_score`).
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
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose one of {STRATEGIES}")
    name = DIVERSE.get(name, name)
    if len(cls_conf) == 0:
        return np.empty(0, dtype=np.float32)
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
        return np.clip(1.0 - entropy / np.log(max(probs.shape[1], 2)), 0.0, 1.0).astype(np.float32)
    # random
    if image_ids is None:
        raise ValueError("strategy 'random' needs the image id of each detection")
    return _hash_uniform(image_ids, seed)


def _hash_uniform(image_ids: list[str] | np.ndarray, seed: int) -> np.ndarray:
    """Uniform (0, 1) per row from (seed, image id, index of the row within its image).

    Each distinct image id is hashed once (blake2b); the row index and the seed are then mixed in
    with splitmix64 over whole arrays, so the cost per detection is a few integer operations. The
    value of a detection depends only on its own image's rows, never on which batch it came in.
    """
    ids = np.asarray(image_ids, dtype=object)
    if len(ids) == 0:
        return np.empty(0, dtype=np.float32)
    unique, inverse = np.unique(ids, return_inverse=True)
    id_hash = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest(),
                                       "little") for image_id in unique], dtype=np.uint64)[inverse]
    # Index of each row among the rows of its image, in input order.
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    counts = np.diff(np.r_[starts, len(ids)])
    index = np.empty(len(ids), dtype=np.uint64)
    index[order] = np.arange(len(ids), dtype=np.uint64) - np.repeat(starts, counts).astype(np.uint64)
    bits = _splitmix64(id_hash ^ _splitmix64(index + np.uint64(0x632BE59BD9B4E019)))
    # The top 24 bits give a float32 exactly; +0.5 keeps the value strictly inside (0, 1).
    return (((bits >> np.uint64(40)).astype(np.float64) + 0.5) / 2.0**24).astype(np.float32)


def uniform_per_image(image_ids: list[str] | np.ndarray, seed: int) -> np.ndarray:
    """One uniform (0, 1) draw per distinct image id: `random`'s draw for an image's first detection
    (selection's seeded order for filling a budget with images that have no detection)."""
    return _hash_uniform(image_ids, seed)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele et al., 2014): a bijective, well-mixing uint64 -> uint64."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


CONFIDENCE_STRATEGIES = ("cls_iou", "cls_only", "loc_only")
DIVERSE = {"cls_iou_diverse": "cls_iou", "kcenter": "random"}  # diversity strategy -> its candidates' score


def selection_min_score(name: str, min_score: float) -> float:
    """The `score` floor for pseudo-code 2. For confidence-like scores it is `min_score` (0.2). For
    margin/entropy/random the score is not a confidence (a margin of 0.05 is the MOST informative), so
    the floor was applied at scoring time to the detection's confidence (cls_conf x loc_conf) instead,
    and selection keeps every stored row."""
    return min_score if DIVERSE.get(name, name) in CONFIDENCE_STRATEGIES else float("-inf")
