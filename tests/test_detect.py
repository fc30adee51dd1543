"""One decoder everywhere: training, evaluation and scoring see the same pixels of the same file, for
the images `cv2.imdecode` (the old train/eval decoder) reads differently from scoring."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from raylib import detect, score, storage
from raylib.training import data as train_data
from raylib.model import build_model
from tests.helpers import labels_table, write_manifest

SIDE = 32  # square images of the model's input size: no resize anywhere, so pixels compare exactly


def _rgba() -> Image.Image:
    pixels = np.zeros((SIDE, SIDE, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 255  # opaque red ...
    pixels[: SIDE // 2, :, 3] = 0  # ... under a fully transparent top half
    return Image.fromarray(pixels, "RGBA")


def _gray16() -> Image.Image:
    image = Image.fromarray(np.tile(np.linspace(0, 65535, SIDE, dtype=np.uint16), (SIDE, 1)))
    assert image.mode == "I;16"
    return image


def _cmyk() -> Image.Image:
    return Image.new("CMYK", (SIDE, SIDE), (0, 255, 255, 0))  # no black, full magenta + yellow: red


def _gray() -> Image.Image:
    return Image.fromarray(np.tile(np.arange(SIDE, dtype=np.uint8) * 7, (SIDE, 1)), "L")


# (maker, file suffix, PIL format, an anchor pixel (row, col) and its BGR value, known without our code)
CASES = {
    "rgba": (_rgba, ".png", "PNG", (0, 0), (114, 114, 114)),  # transparent: YOLOX's pad grey
    "gray16": (_gray16, ".png", "PNG", (5, SIDE - 1), (255, 255, 255)),  # 65535 -> 255
    "cmyk": (_cmyk, ".jpg", "JPEG", None, None),  # lossy: no exact anchor
    "gray": (_gray, ".png", "PNG", (3, 10), (70, 70, 70)),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_train_evaluation_and_scoring_decode_the_same_pixels(tmp_path, kind):
    make, suffix, fmt, anchor, value = CASES[kind]
    uri = str(tmp_path / f"{kind}{suffix}")
    make().save(uri, format=fmt)
    manifest = write_manifest(str(tmp_path / "pool.parquet"), [kind], [uri])
    labels = str(tmp_path / "labels.parquet")
    storage.write_table(labels_table([(kind, "train", [])]), labels)

    samples, _ = train_data.load_split(labels, manifest, "train", cache=train_data.ImageCache(str(tmp_path / "cache")),
                                  max_pixels=10_000)
    training, _, _, _ = train_data.LabelledImages(samples, SIDE, max_pixels=10_000).pull_item(0)
    evaluation = detect.read_image(uri, kind, max_pixels=10_000)
    loaded = score.load_images({"image_id": np.array([kind]), "uri": np.array([uri])}, SIDE, 10_000)
    assert loaded["error"][0] == ""
    scoring = loaded["image"][0]

    assert training.shape == evaluation.shape == scoring.shape == (SIDE, SIDE, 3)
    assert training.dtype == evaluation.dtype == scoring.dtype == np.uint8
    np.testing.assert_array_equal(training, evaluation)
    np.testing.assert_array_equal(scoring, evaluation)
    if anchor is not None:
        assert tuple(int(v) for v in evaluation[anchor]) == value
    if kind in ("rgba", "gray16"):  # the old train/eval decoder saw other pixels in these two
        old = cv2.imdecode(np.fromfile(uri, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert not np.array_equal(old, evaluation)


def test_detect_images_counts_an_over_limit_image_as_failed(tmp_path):
    small, big = str(tmp_path / "small.png"), str(tmp_path / "big.png")
    cv2.imwrite(small, np.full((32, 32, 3), 90, np.uint8))
    cv2.imwrite(big, np.full((32, 64, 3), 90, np.uint8))
    model = build_model("nano", 2)
    detections, failed = detect.detect_images(model, [("small", small), ("big", big)], 64, max_pixels=1_500,
                                              batch_size=1, device=torch.device("cpu"))
    assert failed == ["big"] and list(detections.columns) == ["image_id", "class_id", "score", "x1", "y1", "x2",
                                                              "y2", "cls_conf", "loc_conf"]
    assert model.training  # put back as it was


def test_detect_images_gives_each_image_its_own_detections_across_batches(tmp_path):
    # Batched detections are flat arrays with an image index; each row must land on its own image.
    # Images of different shapes and contents, batches of 2 (the last one short), against each image
    # detected alone. Biases raised so that an untrained model detects (its priors score ~1e-4).
    torch.manual_seed(0)
    model = build_model("nano", 3)
    for conv in (*model.head.obj_preds, *model.head.cls_preds):
        torch.nn.init.constant_(conv.bias, 2.0)
    rng = np.random.default_rng(0)
    items = []
    for i, (height, width) in enumerate([(32, 32), (32, 64), (64, 32), (48, 48), (40, 56)]):
        uri = str(tmp_path / f"im{i}.png")
        cv2.imwrite(uri, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        items.append((f"im{i}", uri))
    batched, failed = detect.detect_images(model, items, 64, None, batch_size=2)
    assert failed == [] and len(batched) > 0
    for image_id, uri in items:
        alone, _ = detect.detect_images(model, [(image_id, uri)], 64, None, batch_size=1)
        ours = batched[batched["image_id"] == image_id].reset_index(drop=True)
        assert len(alone) > 0 and len(ours) == len(alone), image_id
        np.testing.assert_array_equal(ours["class_id"], alone["class_id"])
        np.testing.assert_allclose(ours[["x1", "y1", "x2", "y2", "score"]], alone[["x1", "y1", "x2", "y2", "score"]],
                                   rtol=1e-4, atol=1e-3)
