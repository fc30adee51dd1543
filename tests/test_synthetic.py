"""The bundled synthetic VOC dataset: determinism, imbalance, empties, duplicates, balanced test set."""
from __future__ import annotations

import collections
import os

import cv2
import numpy as np
import pytest

from raylib import synthetic
from raylib.config import SyntheticConfig
from raylib.formats.voc import read_voc, read_voc_labels

SMALL = {"num_pool": 24, "num_test": 8, "min_size": 64, "max_size": 128}


def ids_of(root, set_name: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{set_name}.txt").read_text().split()


def annotations(root, set_name: str) -> dict:
    return {i: read_voc(str(root / "Annotations" / f"{i}.xml")) for i in ids_of(root, set_name)}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The embedded default dataset (240 pool + 60 test images), generated once for this module."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(SyntheticConfig(), str(root))
    return root


def test_layout_and_sets(default_root):
    pool_ids, test_ids = ids_of(default_root, "trainval"), ids_of(default_root, "test")
    assert len(pool_ids) == 240 and len(test_ids) == 60
    assert len(set(pool_ids)) == 240 and not set(pool_ids) & set(test_ids)
    for image_id in pool_ids + test_ids:
        assert (default_root / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (default_root / "Annotations" / f"{image_id}.xml").is_file()
    assert (default_root / "_COMPLETE").read_text().strip() == synthetic.fingerprint(SyntheticConfig())


def test_annotations_are_valid_and_match_the_images(default_root):
    cfg = SyntheticConfig()
    sizes = set()
    for set_name in ("trainval", "test"):
        for image_id, ann in annotations(default_root, set_name).items():
            image = cv2.imread(str(default_root / "JPEGImages" / f"{image_id}.jpg"))
            assert image is not None and (ann.height, ann.width) == image.shape[:2]
            assert ann.filename == f"{image_id}.jpg"
            assert cfg.min_size <= ann.width <= cfg.max_size and cfg.min_size <= ann.height <= cfg.max_size
            sizes.add((ann.width, ann.height))
            short = min(ann.width, ann.height)
            assert len(ann.objects) <= cfg.max_objects
            for obj in ann.objects:
                assert obj.name in cfg.classes
                assert 0 <= obj.x1 < obj.x2 <= ann.width and 0 <= obj.y1 < obj.y2 <= ann.height
                assert min(obj.x2 - obj.x1, obj.y2 - obj.y1) >= 0.12 * short  # learnable at 256 px
    assert any(w != h for w, h in sizes) and len(sizes) > 100  # varied, non-square sizes


def test_boxes_sit_on_the_drawn_shapes(default_root):
    """Independent of the generator's mask: the colour at the box centre (inside every default shape)
    contrasts with the background just outside the box."""
    checked = 0
    for image_id, ann in annotations(default_root, "test").items():
        image = cv2.imread(str(default_root / "JPEGImages" / f"{image_id}.jpg")).astype(np.float32)
        height, width = image.shape[:2]
        for obj in ann.objects:
            x1, y1, x2, y2 = int(obj.x1), int(obj.y1), int(obj.x2), int(obj.y2)
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            centre = np.median(image[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3), axis=0)
            ring = np.zeros((height, width), bool)
            ring[max(0, y1 - 4) : y2 + 4, max(0, x1 - 4) : x2 + 4] = True
            ring[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1] = False
            others = [o for o in ann.objects if o is not obj]
            for o in others:  # outside pixels that belong to a neighbour don't count
                ring[int(o.y1) : int(o.y2), int(o.x1) : int(o.x2)] = False
            if ring.sum() < 20:
                continue
            outside = image[ring].mean(axis=0)
            assert np.abs(centre - outside).sum() > 60, (image_id, obj)
            checked += 1
    assert checked > 100


def test_pool_imbalance_is_geometric(default_root):
    cfg = SyntheticConfig()
    counts = collections.Counter(o.name for a in annotations(default_root, "trainval").values() for o in a.objects)
    observed = np.array([counts[name] for name in cfg.classes], float)
    assert np.all(np.diff(observed) < 0), observed  # strictly fewer objects per class
    expected = cfg.imbalance_rho ** np.arange(len(cfg.classes))
    expected /= expected.sum()  # 8/15, 4/15, 2/15, 1/15
    assert np.allclose(observed / observed.sum(), expected, atol=0.05), (observed / observed.sum(), expected)
    ratios = observed[1:] / observed[:-1]
    assert np.all((ratios > 0.3) & (ratios < 0.75)), ratios


def test_empty_fraction_and_near_duplicates(default_root):
    pool = annotations(default_root, "trainval")
    empty = [i for i, a in pool.items() if not a.objects]
    assert len(empty) == round(0.1 * 240)

    # Near-duplicates: later images with exactly the boxes of an earlier image, and nearly its pixels.
    first_with: dict = {}
    pairs = []
    for image_id, ann in pool.items():
        key = tuple((o.name, o.x1, o.y1, o.x2, o.y2) for o in ann.objects)
        if key and key in first_with:
            pairs.append((first_with[key], image_id))
        first_with.setdefault(key, image_id)
    assert len(pairs) == round(0.05 * 240)
    for source, copy in pairs:
        a = cv2.imread(str(default_root / "JPEGImages" / f"{source}.jpg")).astype(np.float32)
        b = cv2.imread(str(default_root / "JPEGImages" / f"{copy}.jpg")).astype(np.float32)
        diff = np.abs(a - b).mean()
        assert 0 < diff < 30, diff


def test_test_set_is_balanced_and_has_objects(default_root):
    test = annotations(default_root, "test")
    assert all(a.objects for a in test.values())
    counts = collections.Counter(o.name for a in test.values() for o in a.objects)
    assert set(counts) == set(SyntheticConfig().classes)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_labels_read_back_with_class_ids(default_root):
    cfg = SyntheticConfig()
    table, errors = read_voc_labels(str(default_root), ids_of(default_root, "test"), cfg.classes)
    assert errors == [] and table.num_rows == 60


def read_all(root) -> dict[str, bytes]:
    files = {}
    for folder in ("Annotations", "ImageSets/Main"):
        for name in sorted(os.listdir(root / folder)):
            files[f"{folder}/{name}"] = (root / folder / name).read_bytes()
    return files


def pixels(root, image_id: str) -> np.ndarray:
    return cv2.imread(str(root / "JPEGImages" / f"{image_id}.jpg"))


def test_same_seed_same_dataset_different_seed_differs(tmp_path):
    cfg = SyntheticConfig(**SMALL, seed=3)
    synthetic.generate(cfg, str(tmp_path / "a"))
    synthetic.generate(SyntheticConfig(**SMALL, seed=3), str(tmp_path / "b"))
    synthetic.generate(SyntheticConfig(**SMALL, seed=4), str(tmp_path / "c"))

    a, b, c = read_all(tmp_path / "a"), read_all(tmp_path / "b"), read_all(tmp_path / "c")
    assert a == b
    for image_id in ids_of(tmp_path / "a", "trainval") + ids_of(tmp_path / "a", "test"):
        assert np.array_equal(pixels(tmp_path / "a", image_id), pixels(tmp_path / "b", image_id))
    assert set(a) == set(c)  # same ids ...
    differing = [name for name in a if name.startswith("Annotations/") and a[name] != c[name]]
    assert len(differing) > len(a) // 2  # ... different content
    assert not np.array_equal(pixels(tmp_path / "a", "pool_000000"), pixels(tmp_path / "c", "pool_000000"))


def test_test_set_does_not_depend_on_pool_size(tmp_path):
    synthetic.generate(SyntheticConfig(**{**SMALL, "num_pool": 10}), str(tmp_path / "a"))
    synthetic.generate(SyntheticConfig(**{**SMALL, "num_pool": 30}), str(tmp_path / "b"))
    test_ids = ids_of(tmp_path / "a", "test")
    assert test_ids == ids_of(tmp_path / "b", "test")
    for image_id in test_ids:
        name = f"{image_id}.xml"
        assert (tmp_path / "a" / "Annotations" / name).read_bytes() == (tmp_path / "b" / "Annotations" / name).read_bytes()


def test_idempotent_and_regenerates_on_change(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    synthetic.generate(cfg, str(tmp_path))
    image = tmp_path / "JPEGImages" / "pool_000000.jpg"
    image.write_bytes(b"tampered")  # a complete dataset is not looked at again
    synthetic.generate(SyntheticConfig(**SMALL), str(tmp_path))
    assert image.read_bytes() == b"tampered"

    (tmp_path / "_COMPLETE").unlink()  # an interrupted generation is redone
    synthetic.generate(cfg, str(tmp_path))
    assert image.read_bytes()[:2] == b"\xff\xd8"

    bigger = SyntheticConfig(**{**SMALL, "num_pool": 30})  # another config is regenerated in place
    synthetic.generate(bigger, str(tmp_path))
    assert len(ids_of(tmp_path, "trainval")) == 30
    assert (tmp_path / "_COMPLETE").read_text().strip() == synthetic.fingerprint(bigger)
    assert not [n for n in os.listdir(tmp_path / "JPEGImages") if ".tmp-" in n]


def test_many_classes_cycle_shapes_and_textures(tmp_path):
    classes = [f"c{i}" for i in range(12)]
    cfg = SyntheticConfig(**{**SMALL, "num_test": 24}, classes=classes, imbalance_rho=1.0)
    synthetic.generate(cfg, str(tmp_path))
    table, errors = read_voc_labels(str(tmp_path), ids_of(tmp_path, "test"), classes)
    assert errors == []
    seen = {o["class_id"] for row in table.column("objects").to_pylist() for o in row}
    assert seen == set(range(12))
    with pytest.raises(ValueError, match="at most 32 classes"):
        synthetic.generate(SyntheticConfig(**SMALL, classes=[f"c{i}" for i in range(33)]), str(tmp_path / "x"))
