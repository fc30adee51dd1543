"""The bundled default dataset: coloured shapes on textured backgrounds, in VOC layout (no downloads).

    root/JPEGImages/<id>.jpg   root/Annotations/<id>.xml   root/ImageSets/Main/{trainval,test}.txt

Class c is drawn as shape `SHAPES[c % 8]` with texture `TEXTURES[c // 8]` (so up to 32 classes stay
distinguishable); class names are only labels. The pool (`trainval`, ids `pool_NNNNNN`) has what makes
active learning matter: geometric class imbalance (class c has weight rho**c), a fraction of empty
images and of near-duplicates (an earlier image with a brightness shift and noise, same labels). The
test set (`test`, ids `test_NNNNNN`) is fixed and class-balanced: its object classes are a shuffled
round-robin, and it comes from its own random stream, so it doesn't change with `num_pool`.

Everything follows from `cfg.seed` (each image has its own numpy Generator), so the same config
gives the same bytes. Objects are at least ~15% of the image's short side, big enough for a
YOLOX-nano at 256 px to learn in a few epochs.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math

import cv2
import numpy as np

from raylib import storage
from raylib.config import SyntheticConfig
from raylib.formats.voc import VocAnnotation, VocObject, write_voc

GENERATOR_VERSION = 1  # bump when the drawing changes, so cached datasets are regenerated
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "diamond")
TEXTURES = ("solid", "stripes", "checker", "dots")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
MIN_OBJECT, MAX_OBJECT = 0.22, 0.5  # object circle diameter as a fraction of the short side
MAX_IOU = 0.1  # between objects of one image, so shapes stay recognisable
PLACEMENT_TRIES = 30
JPEG_QUALITY = 92
COMPLETE = "_COMPLETE"
POOL_STREAM, TEST_STREAM, LAYOUT_STREAM = 0, 1, 2


@dataclasses.dataclass
class Placed:
    """One object before drawing: a circle of `radius` at (cx, cy) the shape is inscribed in."""

    cx: float
    cy: float
    radius: float
    angle: float  # degrees
    class_id: int = 0
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # of the drawn pixels, set by _draw


def fingerprint(cfg: SyntheticConfig) -> str:
    blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def generate(cfg: SyntheticConfig, root: str) -> None:
    """Write the synthetic VOC dataset under `root`, unless `root/_COMPLETE` says it's there already.

    Idempotent and safe to rerun after a crash: the marker is removed first and written last, and
    every file is written atomically with deterministic content.
    """
    _check(cfg)
    marker = storage.join(root, COMPLETE)
    expected = fingerprint(cfg)
    if storage.exists(marker) and storage.read_text(marker).strip() == expected:
        return
    storage.delete(marker)
    pool_ids = _write_split(cfg, root, "pool", cfg.num_pool, POOL_STREAM)
    test_ids = _write_split(cfg, root, "test", cfg.num_test, TEST_STREAM)
    storage.write_text(storage.join(root, "ImageSets", "Main", "trainval.txt"), "\n".join(pool_ids) + "\n")
    storage.write_text(storage.join(root, "ImageSets", "Main", "test.txt"), "\n".join(test_ids) + "\n")
    storage.write_text(marker, expected + "\n")


def _check(cfg: SyntheticConfig) -> None:
    if len(cfg.classes) > MAX_CLASSES:
        raise ValueError(f"data.synthetic.classes: at most {MAX_CLASSES} classes can be drawn, got {len(cfg.classes)}")
    if cfg.max_objects < 1:
        raise ValueError(f"data.synthetic.max_objects must be >= 1, got {cfg.max_objects}")
    if len(set(cfg.classes)) != len(cfg.classes):
        raise ValueError(f"data.synthetic.classes has duplicate names: {list(cfg.classes)}")


# --------------------------------------------------------------------------------------- the splits


def _write_split(cfg: SyntheticConfig, root: str, prefix: str, count: int, stream: int) -> list[str]:
    """Plan, draw and write one split; returns its ids in order."""
    rng = np.random.default_rng([cfg.seed, stream])
    is_pool = stream == POOL_STREAM
    empty, duplicate_of = _plan_pool(rng, cfg, count) if is_pool else (set(), {})
    originals = [i for i in range(count) if i not in duplicate_of]
    sizes, layouts = {}, {}
    for i in originals:
        layout_rng = np.random.default_rng([cfg.seed, stream, LAYOUT_STREAM, i])
        sizes[i] = _image_size(layout_rng, cfg)
        n_objects = 0 if i in empty else int(layout_rng.integers(1, cfg.max_objects + 1))
        layouts[i] = _layout(layout_rng, *sizes[i], n_objects)
    _assign_classes(rng, [layouts[i] for i in originals], len(cfg.classes), cfg.imbalance_rho, balanced=not is_pool)

    ids = [f"{prefix}_{i:06d}" for i in range(count)]
    sources = set(duplicate_of.values())
    kept: dict[int, np.ndarray] = {}  # only the images that a later duplicate copies
    for i in range(count):
        image_rng = np.random.default_rng([cfg.seed, stream, i])
        if i in duplicate_of:
            source = duplicate_of[i]
            image, objects = _near_duplicate(image_rng, kept[source]), layouts[source]
        else:
            image, objects = _draw(image_rng, *sizes[i], layouts[i]), layouts[i]
            if i in sources:
                kept[i] = image
        _write_image(root, ids[i], image, objects, cfg.classes)
    return ids


def _plan_pool(rng: np.random.Generator, cfg: SyntheticConfig, count: int) -> tuple[set[int], dict[int, int]]:
    """Which pool images are empty, and which are near-duplicates of which earlier image.

    Duplicates sit in the second half and copy an earlier image that has objects, so the number of
    empty images is exactly round(empty_fraction * num_pool).
    """
    n_dup = min(round(cfg.duplicate_fraction * count), count // 2)
    positions = sorted(rng.choice(np.arange(count // 2, count), size=n_dup, replace=False).tolist()) if n_dup else []
    taken = set(positions)
    originals = [i for i in range(count) if i not in taken]
    n_empty = min(round(cfg.empty_fraction * count), len(originals) - 1)
    empty = set(rng.choice(originals, size=n_empty, replace=False).tolist()) if n_empty > 0 else set()
    with_objects = [i for i in originals if i not in empty]
    duplicate_of = {}
    for i in positions:
        earlier = bisect.bisect_left(with_objects, i)
        if earlier:  # else position i stays an ordinary image with objects
            duplicate_of[i] = with_objects[int(rng.integers(0, earlier))]
    return empty, duplicate_of


def _image_size(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[int, int]:
    width, height = rng.integers(cfg.min_size, cfg.max_size + 1, size=2)
    return int(width), int(height)


def _layout(rng: np.random.Generator, width: int, height: int, n_objects: int) -> list[Placed]:
    """Place up to `n_objects` circles inside the image, overlapping each other at most MAX_IOU."""
    short = min(width, height)
    placed: list[Placed] = []
    for _ in range(n_objects):
        for _ in range(PLACEMENT_TRIES):
            radius = rng.uniform(MIN_OBJECT, MAX_OBJECT) * short / 2
            cx = rng.uniform(radius, width - radius)
            cy = rng.uniform(radius, height - radius)
            candidate = Placed(cx, cy, radius, angle=float(rng.uniform(-180, 180)))
            if all(_circle_box_iou(candidate, other) <= MAX_IOU for other in placed):
                placed.append(candidate)
                break
    return placed


def _circle_box_iou(a: Placed, b: Placed) -> float:
    ax1, ay1, ax2, ay2 = a.cx - a.radius, a.cy - a.radius, a.cx + a.radius, a.cy + a.radius
    bx1, by1, bx2, by2 = b.cx - b.radius, b.cy - b.radius, b.cx + b.radius, b.cy + b.radius
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (2 * a.radius) ** 2 + (2 * b.radius) ** 2 - inter
    return inter / union


def _assign_classes(
    rng: np.random.Generator, layouts: list[list[Placed]], num_classes: int, rho: float, balanced: bool
) -> None:
    """Pool: classes drawn with weight rho**c. Test: a shuffled round-robin (counts differ by <= 1)."""
    objects = [obj for layout in layouts for obj in layout]
    if balanced:
        classes = rng.permutation(np.arange(len(objects)) % num_classes)
    else:
        weights = rho ** np.arange(num_classes)
        classes = rng.choice(num_classes, size=len(objects), p=weights / weights.sum())
    for obj, class_id in zip(objects, classes):
        obj.class_id = int(class_id)


# ------------------------------------------------------------------------------------------ drawing


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth random colour field + a few soft lines + pixel noise: texture without shape-like blobs."""
    coarse = rng.integers(40, 216, size=(4, 4, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    for _ in range(int(rng.integers(2, 6))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        shade = int(rng.integers(-40, 40))
        cv2.line(image, p1, p2, (shade, shade, shade), 1)
    image += (rng.standard_normal(image.shape, dtype=np.float32) * 10).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _regular(obj: Placed, corners: int, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or a star with `inner` radius ratio) on the object's circle."""
    count = 2 * corners if inner else corners
    radii = [obj.radius * (inner if inner and k % 2 else 1.0) for k in range(count)]
    angles = [math.radians(angle) + 2 * math.pi * k / count for k in range(count)]
    return np.array([[obj.cx + r * math.cos(a), obj.cy + r * math.sin(a)] for r, a in zip(radii, angles)])


def _rotated(obj: Placed, points: list[tuple[float, float]]) -> np.ndarray:
    """`points` (relative to the centre, in units of the radius) rotated by the object's angle."""
    cos, sin = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
    r = obj.radius
    return np.array([[obj.cx + r * (x * cos - y * sin), obj.cy + r * (x * sin + y * cos)] for x, y in points])


CROSS = [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
         (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)]


def _outline(shape: str, obj: Placed) -> np.ndarray:
    """Polygon vertices of a shape inscribed in the object's circle (so it stays inside the image)."""
    r = obj.radius
    if shape == "square":  # within 18 degrees of axis-aligned, to stay apart from the diamond
        return _regular(obj, 4, 45 + obj.angle / 10)
    if shape == "triangle":
        return _regular(obj, 3, obj.angle)
    if shape == "star":
        return _regular(obj, 5, obj.angle, inner=0.45)
    if shape == "hexagon":
        return _regular(obj, 6, obj.angle)
    if shape == "cross":
        return _rotated(obj, CROSS)
    if shape == "diamond":  # an upright rhombus, narrower than tall
        return np.array([[obj.cx, obj.cy - r], [obj.cx + 0.6 * r, obj.cy], [obj.cx, obj.cy + r], [obj.cx - 0.6 * r, obj.cy]])
    raise ValueError(f"unknown synthetic shape '{shape}'")


def _shape_mask(shape: str, obj: Placed, width: int, height: int) -> np.ndarray:
    """Anti-aliased 0..255 mask of one shape over the whole image."""
    mask = np.zeros((height, width), np.uint8)
    center, radius = (round(obj.cx), round(obj.cy)), round(obj.radius)
    if shape in ("circle", "ring"):
        cv2.circle(mask, center, radius, 255, -1, cv2.LINE_AA)
        if shape == "ring":
            cv2.circle(mask, center, round(obj.radius * 0.55), 0, -1, cv2.LINE_AA)
    else:
        vertices = np.round(_outline(shape, obj) * 16).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 255, cv2.LINE_AA, shift=4)
    return mask


def _texture(rng: np.random.Generator, texture: str, width: int, height: int, colour: np.ndarray) -> np.ndarray:
    """A full-image fill of the object's texture in `colour` and a contrasting second colour."""
    other = (255 - colour) // 2
    ys, xs = np.mgrid[0:height, 0:width]
    period = int(rng.integers(6, 10))
    if texture == "solid":
        pattern = np.ones((height, width), bool)
    elif texture == "stripes":
        pattern = ((xs + ys) // period) % 2 == 0
    elif texture == "checker":
        pattern = ((xs // period) + (ys // period)) % 2 == 0
    else:  # dots
        pattern = ((xs % period) - period / 2) ** 2 + ((ys % period) - period / 2) ** 2 > (period / 3) ** 2
    return np.where(pattern[..., None], colour, other).astype(np.uint8)


def _draw(rng: np.random.Generator, width: int, height: int, objects: list[Placed]) -> np.ndarray:
    """Background, then each object blended in through its anti-aliased mask; sets `obj.box`."""
    image = _background(rng, width, height)
    for obj in objects:
        # Work on the object's square only: cheap, and the shape never leaves it.
        x0, y0 = max(0, int(obj.cx - obj.radius) - 2), max(0, int(obj.cy - obj.radius) - 2)
        x1, y1 = min(width, int(obj.cx + obj.radius) + 3), min(height, int(obj.cy + obj.radius) + 3)
        local = Placed(obj.cx - x0, obj.cy - y0, obj.radius, obj.angle)
        mask = _shape_mask(SHAPES[obj.class_id % len(SHAPES)], local, x1 - x0, y1 - y0)
        crop = image[y0:y1, x0:x1]
        background_mean = crop[mask > 0].mean(axis=0)
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background_mean).sum() < 180:  # keep the object visible
            colour = np.where(background_mean > 127, rng.integers(0, 60, size=3), rng.integers(196, 256, size=3))
        fill = _texture(rng, TEXTURES[obj.class_id // len(SHAPES)], x1 - x0, y1 - y0, colour.astype(np.uint8))
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        image[y0:y1, x0:x1] = (crop * (1 - alpha) + fill * alpha).round().astype(np.uint8)
        bx1, by1, bx2, by2 = _mask_box(mask)
        obj.box = (bx1 + x0, by1 + y0, bx2 + x0, by2 + y0)
    return image


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box of the drawn pixels (x2/y2 exclusive, in pixel-edge coordinates)."""
    ys, xs = np.nonzero(mask >= 128)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _near_duplicate(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    shift = float(rng.uniform(-20, 20))
    noise = rng.normal(0, 4, size=image.shape)
    return np.clip(image.astype(np.float32) + shift + noise, 0, 255).astype(np.uint8)


def _write_image(root: str, image_id: str, image: np.ndarray, objects: list[Placed], classes: list[str]) -> None:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"synthetic image '{image_id}' could not be JPEG-encoded")
    storage.write_bytes(storage.join(root, "JPEGImages", f"{image_id}.jpg"), jpeg.tobytes())
    height, width = image.shape[:2]
    ann = VocAnnotation(
        filename=f"{image_id}.jpg",
        width=width,
        height=height,
        objects=[VocObject(classes[obj.class_id], *obj.box) for obj in objects],
    )
    storage.write_bytes(storage.join(root, "Annotations", f"{image_id}.xml"), write_voc(ann))
