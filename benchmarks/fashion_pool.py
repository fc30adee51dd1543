"""A detection pool harder than the bundled shapes: Fashion-MNIST products pasted onto real photos.

    python benchmarks/fashion_pool.py /tmp/fashion_pool --n-pool 800 --n-test 200 --rho 0.7 --seed 0
    python benchmarks/fashion_pool.py /tmp/fashion_pool --grid /tmp/grid.png   # + a PNG grid with the boxes
    python benchmarks/fashion_pool.py /tmp/digits --digits --seed 1000          # the pretraining source task

Objects are real 28x28 product photos from Zalando's Fashion-MNIST (10 classes, several of them easy to
confuse: shirt / t-shirt / pullover / coat, sneaker / sandal / ankle boot), from Debian's
`dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist` puts the idx files under
/usr/share/datasets/fashion-mnist; `FASHION_MNIST_DIR` points elsewhere). Each object is scaled 3-8x,
tinted with a random colour (the photo's grey levels kept as texture), randomly mirrored, and alpha-blended
(alpha from its grey level, so the black product-photo background disappears) onto a random crop of a real
photo: scikit-learn's bundled sample images (china.jpg, flower.jpg) and scikit-image's bundled `skimage.data`
photos (whichever of the two is installed; both are benchmark-only dependencies, not raylib's).

The pool has geometric class imbalance (class c drawn with weight rho**c, so `ankle_boot` is rare) and a
fraction of empty images; the test set draws classes uniformly, so mAP weighs rare classes as much as common
ones. Pool objects come from Fashion-MNIST's train split, test objects from its t10k split. Everything is
deterministic in (n_pool, n_test, rho, seed): image i's random stream is derived from (kind, seed, split, i),
so a smaller build is a prefix of a larger one.

`build_digits` makes a disjoint source task the same way from scikit-learn's bundled handwritten digits
(benchmarks/label_efficiency.py pretrains on it: transfer learning without any fashion label).

Output is a VOCdevkit-style root that `data=voc` reads:

    JPEGImages/<id>.jpg  Annotations/<id>.xml  ImageSets/Main/{trainval,test}.txt  fashion_pool.json

    python jobs/loop.py data=voc data.root=/tmp/fashion_pool data.pool_sets=[trainval] \
        data.test_sets=[test] "data.classes=[tshirt_top,trouser,...]"   # CLASSES below
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

from raylib.formats.voc import VocAnnotation, VocObject, write_voc

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
FMNIST_DIRS = ["/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist"]
# scikit-image's bundled photos that make plausible cluttered backgrounds (no synthetic test charts).
SKIMAGE_PHOTOS = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "rocket.jpg", "retina.jpg", "page.png"]
VERSION = 2  # bump when the generator changes what it draws


@dataclass
class PoolSpec:
    n_pool: int = 800
    n_test: int = 200
    rho: float = 0.7  # class c drawn with weight rho**c in the pool
    seed: int = 0
    empty_fraction: float = 0.1  # pool images with no object (the test set has none)
    max_objects: int = 3
    min_side: int = 224  # image sides drawn in [min_side, max_side]
    max_side: int = 448
    min_scale: float = 3.0  # object side = 28 * scale
    max_scale: float = 8.0
    max_overlap: float = 0.15  # IoU allowed between two objects of one image
    version: int = VERSION


# ----------------------------------------------------------------------------------------- sources


def fmnist_dir() -> str:
    """The folder with Fashion-MNIST's idx files; says how to get them when there is none."""
    candidates = ([os.environ["FASHION_MNIST_DIR"]] if os.environ.get("FASHION_MNIST_DIR") else []) + FMNIST_DIRS
    for folder in candidates:
        if os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
            return folder
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found in {candidates}: `apt-get install dataset-fashion-mnist` (Debian), "
        "or set FASHION_MNIST_DIR to a folder holding train-images-idx3-ubyte.gz and friends"
    )


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] uint8) of Fashion-MNIST's `train` or `t10k` split."""
    folder = fmnist_dir()
    images = _read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
    return images, labels


def background_paths() -> list[str]:
    """Real photos bundled with scikit-learn and scikit-image (whichever is installed), in a fixed order."""
    found = []
    try:
        import sklearn.datasets

        folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        found += [os.path.join(folder, name) for name in ("china.jpg", "flower.jpg")]
    except ImportError:
        pass
    try:
        import skimage

        folder = os.path.join(os.path.dirname(skimage.__file__), "data")
        found += [os.path.join(folder, name) for name in SKIMAGE_PHOTOS]
    except ImportError:
        pass
    found = [p for p in found if os.path.exists(p)]
    if not found:
        raise FileNotFoundError(
            "no background photos: install scikit-learn and/or scikit-image into the venv "
            "(`.venv/bin/pip install scikit-learn scikit-image`; benchmark-only dependencies)"
        )
    return found


def load_backgrounds() -> list[np.ndarray]:
    """BGR uint8 photos, each at least 256 px on its short side (small ones upscaled)."""
    photos = []
    for path in background_paths():
        with Image.open(path) as photo:  # PIL, not cv2: libpng warns about some of these files' ICC profiles
            image = np.ascontiguousarray(np.asarray(photo.convert("RGB"))[..., ::-1])
        short = min(image.shape[:2])
        if short < 256:
            image = cv2.resize(image, None, fx=256 / short, fy=256 / short, interpolation=cv2.INTER_CUBIC)
        photos.append(image)
    return photos


# ------------------------------------------------------------------------------------------ drawing


def _crop_background(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A random crop of `photo` with the target aspect, 35-100% of the largest such crop, resized."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    max_w = min(pw, ph * aspect)
    crop_w = max_w * rng.uniform(0.35, 1.0)
    crop_h = crop_w / aspect
    x0 = rng.uniform(0, pw - crop_w)
    y0 = rng.uniform(0, ph - crop_h)
    crop = photo[int(y0): int(y0 + crop_h), int(x0): int(x0 + crop_w)]
    crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.7, 1.2)  # lighting
    return np.clip(crop.astype(np.float32) * gain, 0, 255)


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A random BGR colour in [0, 1]: any hue, mostly saturated, never very dark."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.2, 1.0) * 255, rng.uniform(0.55, 1.0) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32) / 255


def _sprite(rng: np.random.Generator, item: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The product photo scaled, tinted and maybe mirrored: (colour [h, w, 3] float32, alpha [h, w])."""
    side = round(28 * scale)
    grey = cv2.resize(item.astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    if rng.random() < 0.5:
        grey = grey[:, ::-1]
    # Fashion-MNIST's backgrounds are 0 and dark products sit at ~0.05-0.2: full opacity from 0.1 up.
    alpha = np.clip(grey / 0.1, 0, 1)
    colour = _tint(rng)[None, None, :] * (0.3 + 0.7 * grey[..., None]) * 255
    return colour, alpha


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def draw_image(
    rng: np.random.Generator, spec: PoolSpec, photos: list[np.ndarray], items: np.ndarray,
    item_ids: list[int], class_ids: list[int],
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image: a background crop with the given items pasted; returns (BGR uint8, [(class, x1, y1, x2, y2)]).

    Boxes are the tight box of each pasted object's alpha > 0.5 (what a person would draw). An object that
    doesn't fit without overlapping another by more than `max_overlap` IoU is left out.
    """
    width = int(rng.integers(spec.min_side, spec.max_side + 1))
    height = int(rng.integers(spec.min_side, spec.max_side + 1))
    canvas = _crop_background(rng, photos[int(rng.integers(len(photos)))], width, height)
    boxes: list[tuple[int, float, float, float, float]] = []
    for item_id, class_id in zip(item_ids, class_ids):
        max_scale = min(spec.max_scale, 0.9 * min(width, height) / 28)
        scale = rng.uniform(spec.min_scale, max(spec.min_scale, max_scale))
        colour, alpha = _sprite(rng, items[item_id], scale)
        rows, cols = np.nonzero(alpha > 0.5)
        if len(rows) == 0:
            continue
        side = alpha.shape[0]
        for _ in range(30):
            x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            box = (float(x0 + cols.min()), float(y0 + rows.min()), float(x0 + cols.max() + 1), float(y0 + rows.max() + 1))
            if all(_iou(box, other[1:]) <= spec.max_overlap for other in boxes):
                break
        else:
            continue
        region = canvas[y0: y0 + side, x0: x0 + side]
        a = alpha[..., None]
        region[:] = a * colour + (1 - a) * region
        boxes.append((class_id, *box))
    noise = rng.normal(0, rng.uniform(0, 6), canvas.shape).astype(np.float32)  # sensor noise
    return np.clip(canvas + noise, 0, 255).astype(np.uint8), boxes


# ------------------------------------------------------------------------------------------ writing


KINDS = {"fashion-mnist": 0, "sklearn-digits": 1}  # part of every stream: two kinds never share a layout


def _image_rng(kind: str, seed: int, split: int, index: int) -> np.random.Generator:
    """Image `index` of `split` draws everything from its own stream: a smaller build is a prefix of a larger one."""
    return np.random.default_rng(np.random.SeedSequence([KINDS[kind], seed, split, index]))


def write_image(root: str, image_id: str, image: np.ndarray, boxes: list, classes: list[str], per_class: np.ndarray,
                quality: int) -> None:
    """One pool image in the VOC layout: JPEGImages/<id>.jpg and Annotations/<id>.xml; its boxes
    (class, x1, y1, x2, y2) counted into `per_class`."""
    cv2.imwrite(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    ann = VocAnnotation(filename=f"{image_id}.jpg", width=image.shape[1], height=image.shape[0], objects=[
        VocObject(classes[c], x1, y1, x2, y2) for c, x1, y1, x2, y2 in boxes])
    with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "wb") as f:
        f.write(write_voc(ann))
    for c, *_ in boxes:
        per_class[c] += 1


def _write_split(root: str, kind: str, spec: PoolSpec, photos: list[np.ndarray], split: int, prefix: str, count: int,
                 items: np.ndarray, labels: np.ndarray, classes: list[str], weights: np.ndarray,
                 empty_fraction: float) -> tuple[list[str], np.ndarray]:
    by_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
    ids, per_class = [], np.zeros(len(classes), np.int64)
    for index in range(count):
        rng = _image_rng(kind, spec.seed, split, index)
        n_objects = 0 if rng.random() < empty_fraction else int(rng.integers(1, spec.max_objects + 1))
        class_ids = [int(c) for c in rng.choice(len(classes), size=n_objects, p=weights)]
        item_ids = [int(rng.choice(by_class[c])) for c in class_ids]
        image, boxes = draw_image(rng, spec, photos, items, item_ids, class_ids)
        image_id = f"{prefix}{index:05d}"
        write_image(root, image_id, image, boxes, classes, per_class, quality=92)
        ids.append(image_id)
    return ids, per_class


def _build(root: str, spec: PoolSpec, kind: str, classes: list[str],
           sources: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict:
    """Shared by `build` and `build_digits`: (pool items, labels) and (test items, labels) in `sources`."""
    fingerprint = hashlib.sha256(json.dumps({"kind": kind, **asdict(spec)}, sort_keys=True).encode()).hexdigest()[:16]
    summary_path = os.path.join(root, "fashion_pool.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("fingerprint") == fingerprint:
            return summary
        os.remove(summary_path)  # a different build: no stale marker while this one is written
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    photos = load_backgrounds()
    weights = np.array([spec.rho**c for c in range(len(classes))])
    (pool_items, pool_labels), (test_items, test_labels) = sources
    pool_ids, pool_counts = _write_split(root, kind, spec, photos, 0, "p", spec.n_pool, pool_items, pool_labels, classes,
                                         weights / weights.sum(), spec.empty_fraction)
    uniform = np.full(len(classes), 1 / len(classes))
    test_ids, test_counts = _write_split(root, kind, spec, photos, 1, "t", spec.n_test, test_items, test_labels, classes,
                                         uniform, 0.0)
    for name, ids in (("trainval", pool_ids), ("test", test_ids)):
        with open(os.path.join(root, "ImageSets", "Main", f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    summary = {
        "kind": kind, "spec": asdict(spec), "fingerprint": fingerprint, "classes": classes,
        "pool_images": spec.n_pool, "test_images": spec.n_test,
        "pool_empty_images": int(sum(1 for i in pool_ids if not _has_objects(root, i))),
        "pool_objects_per_class": dict(zip(classes, pool_counts.tolist())),
        "test_objects_per_class": dict(zip(classes, test_counts.tolist())),
        "backgrounds": [os.path.basename(p) for p in background_paths()],
    }
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _has_objects(root: str, image_id: str) -> bool:
    with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "rb") as f:
        return b"<object>" in f.read()


def build(root: str, n_pool: int = 800, n_test: int = 200, rho: float = 0.7, seed: int = 0, **options) -> dict:
    """Write the Fashion-MNIST pool under `root` (skipped if `root` already holds the same build).

    Returns the build's summary (also `root/fashion_pool.json`): the spec, its fingerprint, the classes,
    objects per class in the pool and the test set, and the background photos used.
    """
    spec = PoolSpec(n_pool=n_pool, n_test=n_test, rho=rho, seed=seed, **options)
    summary = _build(root, spec, "fashion-mnist", CLASSES, (load_fmnist("train"), load_fmnist("t10k")))
    return {**summary, "objects_from": fmnist_dir()}


DIGIT_CLASSES = [f"digit_{d}" for d in range(10)]


def build_digits(root: str, n_pool: int = 800, n_test: int = 100, seed: int = 1000, **options) -> dict:
    """A disjoint source task for transfer learning: scikit-learn's bundled handwritten digits (1,797 real
    8x8 scans, UCI optdigits), upscaled to 28x28 and pasted exactly as `build` pastes the products, classes
    balanced. Pretraining on it teaches "a tinted thing pasted on a photo" without any fashion label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = np.stack([cv2.resize((image * 16).clip(0, 255).astype(np.uint8), (28, 28), interpolation=cv2.INTER_CUBIC)
                      for image in digits.images])
    labels = digits.target.astype(np.int64)
    half = np.arange(len(items)) % 5 == 0  # 1 in 5 digit scans for the test images, the rest for the pool
    spec = PoolSpec(n_pool=n_pool, n_test=n_test, rho=1.0, seed=seed, **options)
    return _build(root, spec, "sklearn-digits", DIGIT_CLASSES,
                  ((items[~half], labels[~half]), (items[half], labels[half])))


def grid(root: str, out_png: str, n: int = 12, prefix: str = "p", cols: int = 4, cell: int = 320) -> None:
    """A PNG grid of the first `n` images of a split with their ground-truth boxes and class names."""
    from raylib.formats.voc import read_voc

    tiles = []
    for index in range(n):
        image_id = f"{prefix}{index:05d}"
        image = cv2.imread(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        ann = read_voc(os.path.join(root, "Annotations", f"{image_id}.xml"))
        for obj in ann.objects:
            cv2.rectangle(image, (int(obj.x1), int(obj.y1)), (int(obj.x2) - 1, int(obj.y2) - 1), (0, 255, 0), 1)
            cv2.putText(image, obj.name, (int(obj.x1) + 2, int(obj.y1) + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 255, 0), 1)
        s = cell / max(image.shape[:2])
        image = cv2.resize(image, None, fx=s, fy=s)
        tile = np.zeros((cell, cell, 3), np.uint8)
        tile[: image.shape[0], : image.shape[1]] = image
        tiles.append(tile)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i: i + cols]) for i in range(0, len(tiles), cols)]
    cv2.imwrite(out_png, np.vstack(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--n-pool", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--rho", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", action="store_true", help="the digits source task instead (pretraining)")
    parser.add_argument("--grid", help="also write a PNG grid of pool images with their boxes")
    args = parser.parse_args()
    if args.digits:
        summary = build_digits(args.root, args.n_pool, args.n_test, args.seed)
    else:
        summary = build(args.root, args.n_pool, args.n_test, args.rho, args.seed)
    print(json.dumps({k: summary[k] for k in ("pool_objects_per_class", "test_objects_per_class")}, indent=1))
    if args.grid:
        grid(args.root, args.grid)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
