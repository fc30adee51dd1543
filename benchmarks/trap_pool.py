"""A pool built like a camera trap's: long-tail classes and bursts of near-identical frames, on real photos.

    python benchmarks/trap_pool.py /tmp/trap_pool                       # 2,000 pool + 500 test images
    python benchmarks/trap_pool.py /tmp/trap_pool --grid /tmp/grid.png  # + a PNG grid of the first frames

What makes active learning pay on real pools, and what random sampling wastes labels on:
- **long-tail classes**: class c of `CLASSES` appears in a scene with weight rho**c (rho 0.55: the rarest,
  `ankle_boot`, is 20x rarer than `trouser`), so a random sample of 2% of the pool holds a rare class
  a handful of times or not at all;
- **near-duplicate bursts**: a camera trap or a video keeps shooting while something is in front of it. A
  scene (one camera: a fixed crop of one real photo, one set of objects) is a burst of 5-20 frames with
  probability `burst_prob`, else one frame. Between frames the objects drift a few pixels, the camera
  shakes by up to 3 px, the light changes by a few percent and the sensor noise is new: labels on a
  second frame of a burst teach almost nothing the first did not;
- **empty scenes** (false triggers: wind, light), bursts too.

Objects are real product photos from Fashion-MNIST (Debian `dataset-fashion-mnist`, as
`benchmarks/fashion_pool.py` reads them), six of its classes that do not look alike, scaled, tinted,
mirrored and pasted onto real photos bundled with scikit-learn / scikit-image, with fashion_pool.py's
drawing functions (one home). Frames are 4:3 like a trap's (320-416 px wide), objects 25-55% of the
frame's height: a pretrained YOLOX-tiny learns them at 256-320 px input.

The test set is fixed and unlike the pool on purpose: one frame per scene (no bursts), classes uniform (the
mAP weighs the rare classes as much as the common ones), objects from Fashion-MNIST's t10k split (the pool's
from its train split). Everything is deterministic in the spec: scene s draws from its own random stream,
so a smaller pool is a prefix of a larger one (its last burst cut short).

Output is a VOCdevkit-style root that `data=voc` reads (`trap_pool.json` beside it: the spec, objects per
class, the scene of each pool image):

    python jobs/loop.py data=voc data.root=/tmp/trap_pool data.pool_sets=[trainval] data.test_sets=[test] \
        "data.classes=[trouser,tshirt_top,bag,sandal,dress,ankle_boot]"
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np


import fashion_pool  # beside this script (benchmarks/ is on sys.path when it runs)

# Commonest first: class c has weight rho**c. Fashion-MNIST's label of each (the idx files' numbering).
CLASSES = ["trouser", "tshirt_top", "bag", "sandal", "dress", "ankle_boot"]
FMNIST_LABEL = {"tshirt_top": 0, "trouser": 1, "dress": 3, "sandal": 5, "bag": 8, "ankle_boot": 9}
VERSION = 1  # bump when the generator changes what it draws
POOL_SPLIT, TEST_SPLIT = 0, 1
KIND = 2  # fashion_pool's streams are 0 and 1: no pool of either module shares a random stream


@dataclass
class TrapSpec:
    n_pool: int = 2000
    n_test: int = 500
    rho: float = 0.55  # class c drawn with weight rho**c in the pool (rarest / commonest = rho**5)
    seed: int = 0
    burst_prob: float = 0.25  # a pool scene is a burst with this probability, else a single frame
    min_burst: int = 5
    max_burst: int = 20
    empty_prob: float = 0.1  # scenes with no object (false triggers)
    max_objects: int = 3
    min_width: int = 320  # frames are 4:3, width drawn in [min_width, max_width]
    max_width: int = 416
    min_height_frac: float = 0.25  # object side as a fraction of the frame's height
    max_height_frac: float = 0.55
    max_overlap: float = 0.1
    drift: float = 4.0  # px per frame, per object, at most
    shake: int = 3  # camera shake, px
    version: int = VERSION


@dataclass
class Scene:
    """One camera's view: the background crop (with a margin for shake) and its objects' sprites and paths."""

    background: np.ndarray  # [h + 2 shake, w + 2 shake, 3] float32
    sprites: list  # [(class_id, colour [s, s, 3], alpha [s, s], x0, y0, vx, vy)]
    frames: int


def _scene_rng(spec: TrapSpec, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([KIND, spec.seed, split, index]))


def _draw_scene(rng: np.random.Generator, spec: TrapSpec, split: int, photos: list[np.ndarray],
                by_class: list[np.ndarray], items: np.ndarray, weights: np.ndarray) -> Scene:
    """A scene's background, objects (placed without overlap) and motion; frames: 1 in the test set."""
    bursty = split == POOL_SPLIT and rng.random() < spec.burst_prob
    frames = int(rng.integers(spec.min_burst, spec.max_burst + 1)) if bursty else 1
    width = int(rng.integers(spec.min_width, spec.max_width + 1)) // 4 * 4
    height = width * 3 // 4
    m = spec.shake
    background = fashion_pool._crop_background(rng, photos[int(rng.integers(len(photos)))], width + 2 * m, height + 2 * m)
    empty = split == POOL_SPLIT and rng.random() < spec.empty_prob
    n_objects = 0 if empty else int(rng.integers(1, spec.max_objects + 1))
    sprites, boxes = [], []
    for class_id in rng.choice(len(weights), size=n_objects, p=weights):
        item = items[int(rng.choice(by_class[class_id]))]
        side = rng.uniform(spec.min_height_frac, spec.max_height_frac) * height
        colour, alpha = fashion_pool._sprite(rng, item, side / 28)
        s = alpha.shape[0]
        travel = spec.drift * (frames - 1)  # room for the whole path inside the frame
        if s + travel >= min(width, height):
            continue
        vx, vy = rng.uniform(-spec.drift, spec.drift, size=2)
        for _ in range(30):
            x0 = rng.uniform(max(0, -vx * (frames - 1)), width - s - max(0, vx * (frames - 1)))
            y0 = rng.uniform(max(0, -vy * (frames - 1)), height - s - max(0, vy * (frames - 1)))
            box = (x0, y0, x0 + s, y0 + s)
            if all(fashion_pool._iou(box, other) <= spec.max_overlap for other in boxes):
                break
        else:
            continue
        boxes.append(box)
        sprites.append((int(class_id), colour, alpha, x0, y0, vx, vy))
    return Scene(background, sprites, frames)


def _render(rng: np.random.Generator, spec: TrapSpec, scene: Scene, frame: int) -> tuple[np.ndarray, list]:
    """Frame `frame` of a scene: shaken background, objects moved along their paths, new light and noise."""
    m = spec.shake
    dx, dy = (int(v) for v in rng.integers(-m, m + 1, size=2))
    h, w = scene.background.shape[0] - 2 * m, scene.background.shape[1] - 2 * m
    canvas = scene.background[m + dy: m + dy + h, m + dx: m + dx + w].copy()
    boxes = []
    for class_id, colour, alpha, x0, y0, vx, vy in scene.sprites:
        x, y = int(round(x0 + vx * frame)), int(round(y0 + vy * frame))
        s = alpha.shape[0]
        region = canvas[y: y + s, x: x + s]
        a = alpha[..., None]
        region[:] = a * colour + (1 - a) * region
        rows, cols = np.nonzero(alpha > 0.5)  # the tight box a person would draw
        boxes.append((class_id, float(x + cols.min()), float(y + rows.min()),
                      float(x + cols.max() + 1), float(y + rows.max() + 1)))
    light = rng.uniform(0.92, 1.08)
    noise = rng.normal(0, rng.uniform(1, 5), canvas.shape).astype(np.float32)
    return np.clip(canvas * light + noise, 0, 255).astype(np.uint8), boxes


def _write_split(root: str, spec: TrapSpec, split: int, count: int, photos: list[np.ndarray],
                 items: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[list[str], list[int], np.ndarray]:
    """`count` frames of consecutive scenes; returns (image ids, scene of each, objects per class)."""
    prefix = "p" if split == POOL_SPLIT else "t"
    by_class = [np.flatnonzero(labels == FMNIST_LABEL[name]) for name in CLASSES]
    ids, scenes, per_class = [], [], np.zeros(len(CLASSES), np.int64)
    scene_index = 0
    while len(ids) < count:
        rng = _scene_rng(spec, split, scene_index)
        scene = _draw_scene(rng, spec, split, photos, by_class, items, weights)
        for frame in range(min(scene.frames, count - len(ids))):
            image, boxes = _render(rng, spec, scene, frame)
            image_id = f"{prefix}{len(ids):05d}"
            fashion_pool.write_image(root, image_id, image, boxes, CLASSES, per_class, quality=90)
            ids.append(image_id)
            scenes.append(scene_index)
        scene_index += 1
    return ids, scenes, per_class


def build(root: str, n_pool: int = 2000, n_test: int = 500, seed: int = 0, **options) -> dict:
    """Write the pool under `root` (skipped if `root` already holds the same build); returns its summary
    (also `root/trap_pool.json`): spec, fingerprint, classes, objects per class, scenes and bursts."""
    spec = TrapSpec(n_pool=n_pool, n_test=n_test, seed=seed, **options)
    fingerprint = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]
    summary_path = os.path.join(root, "trap_pool.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("fingerprint") == fingerprint:
            return summary
        os.remove(summary_path)  # a different build: no stale marker while this one is written
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    photos = fashion_pool.load_backgrounds()
    weights = np.array([spec.rho**c for c in range(len(CLASSES))])
    pool_ids, pool_scenes, pool_counts = _write_split(
        root, spec, POOL_SPLIT, spec.n_pool, photos, *fashion_pool.load_fmnist("train"), weights / weights.sum())
    test_ids, _, test_counts = _write_split(
        root, spec, TEST_SPLIT, spec.n_test, photos, *fashion_pool.load_fmnist("t10k"),
        np.full(len(CLASSES), 1 / len(CLASSES)))
    for name, ids in (("trainval", pool_ids), ("test", test_ids)):
        with open(os.path.join(root, "ImageSets", "Main", f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    frames_per_scene = np.bincount(pool_scenes)
    summary = {
        "spec": asdict(spec), "fingerprint": fingerprint, "classes": CLASSES,
        "pool_images": spec.n_pool, "test_images": spec.n_test,
        "pool_scenes": int(len(frames_per_scene)),
        "pool_images_in_bursts": int(frames_per_scene[frames_per_scene >= spec.min_burst].sum()),
        "pool_empty_images": int(sum(1 for i in pool_ids if not fashion_pool._has_objects(root, i))),
        "pool_objects_per_class": dict(zip(CLASSES, pool_counts.tolist())),
        "test_objects_per_class": dict(zip(CLASSES, test_counts.tolist())),
        "backgrounds": [os.path.basename(p) for p in fashion_pool.background_paths()],
        "objects_from": fashion_pool.fmnist_dir(),
        "scene_of_image": dict(zip(pool_ids, pool_scenes)),
    }
    with open(summary_path, "w") as f:
        json.dump(summary, f)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--n-pool", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", help="also write a PNG grid of pool images with their boxes")
    args = parser.parse_args()
    summary = build(args.root, args.n_pool, args.n_test, args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("scene_of_image", "spec")}, indent=1))
    if args.grid:
        fashion_pool.grid(args.root, args.grid, n=16)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
