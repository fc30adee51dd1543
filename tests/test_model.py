"""YOLOX wrapper: every size builds with the right output shape; weights save/load safely, locally and on S3."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

import numpy as np

from raylib import model, storage
from tests.reference_decode import decode_per_image

SIDE = 64
ANCHORS = (SIDE // 8) ** 2 + (SIDE // 16) ** 2 + (SIDE // 32) ** 2  # strides 8, 16, 32 -> 84


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: don't fight other test processes
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "size, num_classes",
    [("nano", 1), ("nano", 3), ("nano", 20), ("tiny", 2), ("tiny", 80), ("s", 20), ("m", 1), ("l", 5), ("x", 3)],
)
def test_every_size_builds_with_output_b_anchors_5_plus_c(size, num_classes):
    torch.manual_seed(0)
    net = model.build_model(size, num_classes).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, SIDE, SIDE) * 255)
    assert tuple(out.shape) == (2, ANCHORS, 5 + num_classes)
    probabilities = out[..., 4:]  # objectness and class probabilities are sigmoided in eval mode
    assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_bad_size_and_class_count():
    with pytest.raises(ValueError, match="unknown YOLOX size 'huge'"):
        model.build_model("huge", 3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        model.build_model("nano", 0)


def states_equal(a: dict, b: dict, keys=None) -> bool:
    keys = keys if keys is not None else a.keys()
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    source = model.build_model("nano", 3)
    uri = str(tmp_path / "w" / "model.pt")
    model.save_weights(source, uri, "nano", ["a", "b", "c"])

    payload = model.read_weights(uri)
    assert (payload["size"], payload["num_classes"], payload["class_names"]) == ("nano", 3, ["a", "b", "c"])

    torch.manual_seed(2)  # a different fresh init, so equality below comes from loading
    loaded = model.load_model("nano", 3, uri)
    assert not states_equal(model.build_model("nano", 3).state_dict(), source.state_dict())
    assert states_equal(loaded.state_dict(), source.state_dict())
    assert loaded.state_dict().keys() == source.state_dict().keys()


def test_other_class_count_reinitialises_only_the_class_head(tmp_path):
    torch.manual_seed(1)
    source = model.build_model("nano", 3)
    uri = str(tmp_path / "model.pt")
    model.save_weights(source, uri, "nano", ["a", "b", "c"])

    torch.manual_seed(3)
    target = model.build_model("nano", 5)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    skipped = model.load_weights(target, uri)

    cls_keys = {k for k in fresh if k.startswith("head.cls_preds.")}
    assert set(skipped) == cls_keys and len(cls_keys) == 6  # weight + bias at 3 strides
    state, saved = target.state_dict(), source.state_dict()
    for key in cls_keys:
        assert state[key].shape != saved[key].shape
        assert torch.equal(state[key], fresh[key])  # kept its fresh initialisation
    others = [k for k in state if k not in cls_keys]
    assert states_equal(state, saved, others)


@pytest.mark.parametrize("saved_size, loaded_size", [("tiny", "s"), ("nano", "tiny"), ("s", "nano")])
def test_weights_of_another_size_raise_a_clear_error(tmp_path, saved_size, loaded_size):
    uri = str(tmp_path / f"{saved_size}.pt")
    model.save_weights(model.build_model(saved_size, 2), uri, saved_size, ["a", "b"])
    with pytest.raises(ValueError, match="another model size|do not fit this model") as info:
        model.load_model(loaded_size, 2, uri)
    assert uri in str(info.value)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('x')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the hostile pickles' protocol
@pytest.mark.parametrize(
    "payload",
    [b"not a weights file at all", b"", pickle.dumps(_RunsCode()), pickle.dumps({"model": _RunsCode()})],
    ids=["text", "empty", "pickle-code", "nested-pickle-code"],
)
def test_non_weights_files_raise_without_running_code(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    uri = str(tmp_path / "bad.pt")
    (tmp_path / "bad.pt").write_bytes(payload)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        model.load_model("nano", 2, uri)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_a_torch_file_that_is_not_a_state_dict(tmp_path):
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    (tmp_path / "list.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="is not a YOLOX state dict"):
        model.read_weights(str(tmp_path / "list.pt"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        model.load_model("nano", 2, str(tmp_path / "nope.pt"))


def test_yolox_package_and_bare_state_dicts_are_accepted(tmp_path):
    torch.manual_seed(4)
    source = model.build_model("nano", 2)
    for name, payload in {"yolox.pth": {"model": source.state_dict(), "optimizer": None, "start_epoch": 3},
                          "bare.pth": source.state_dict()}.items():
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        (tmp_path / name).write_bytes(buffer.getvalue())
        assert states_equal(model.load_model("nano", 2, str(tmp_path / name)).state_dict(), source.state_dict())


@pytest.mark.s3
def test_weights_on_s3(s3_bucket):
    torch.manual_seed(5)
    source = model.build_model("nano", 4)
    uri = f"{s3_bucket}/runs/r/round=00/train/model.pt"
    model.save_weights(source, uri, "nano", list("abcd"))
    assert storage.exists(uri)
    loaded = model.load_model("nano", 4, uri)
    assert states_equal(loaded.state_dict(), source.state_dict())


def test_unwrap_returns_the_bare_module():
    net = model.build_model("nano", 1)

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert model.unwrap(Wrapper(net)) is net
    assert model.unwrap(net) is net


def _raw_output(rows: list[tuple[float, float, float, float, float, list[float]]]) -> torch.Tensor:
    """One image's eval output [1, n, 5 + C] from (cx, cy, w, h, loc_conf, class_probs) rows."""
    return torch.tensor([[[cx, cy, w, h, loc, *probs] for cx, cy, w, h, loc, probs in rows]])


def test_decode_maps_to_original_pixels_clips_and_drops_boxes_outside_the_image():
    # Image 100 (wide) x 50 (high) letterboxed into 64 x 64 with ratio 0.64: rows 32..63 are padding.
    rows = [
        (16.0, 8.0, 16.0, 8.0, 0.9, [0.8, 0.1]),  # inside: x 8..24, y 4..12 (input px)
        (60.0, 10.0, 16.0, 8.0, 0.9, [0.1, 0.7]),  # crosses the right edge: clipped to x <= 100
        (20.0, 50.0, 16.0, 8.0, 0.9, [0.9, 0.0]),  # wholly in the padding below the image: dropped
        (20.0, 33.0, 16.0, 1.0, 0.9, [0.9, 0.0]),  # in the padding, its top 0.5 px under the edge: dropped
    ]
    (dets,) = model.decode(_raw_output(rows), [0.64], [(50, 100)], candidate_conf=0.01)
    order = torch.argsort(torch.from_numpy(dets.boxes[:, 0])).numpy()
    boxes = dets.boxes[order]
    assert len(boxes) == 2
    torch.testing.assert_close(torch.from_numpy(boxes[0]), torch.tensor([8, 4, 24, 12]) / 0.64)
    torch.testing.assert_close(torch.from_numpy(boxes[1]), torch.tensor([52 / 0.64, 6 / 0.64, 100, 14 / 0.64]))
    assert dets.class_id[order].tolist() == [0, 1]
    torch.testing.assert_close(torch.from_numpy(dets.loc_conf), torch.tensor([0.9, 0.9]))
    assert ((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all()


def random_outputs(n_images: int, anchors: int, num_classes: int, side: int, seed: int,
                   device: str = "cpu") -> torch.Tensor:
    """Eval outputs with boxes all over the input and confidences spread over 0..1, so that NMS has
    overlaps to suppress in every (image, class) group."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.rand(n_images, anchors, 5 + num_classes, generator=generator)
    out[..., :2] *= side
    out[..., 2:4] = out[..., 2:4] * side / 4 + 2
    return out.to(device)


def assert_same_detections(batched: list[model.ImageDetections], reference: list[model.ImageDetections]) -> None:
    """Same rows per image. Compared in a canonical order (score, then class and box), because rows
    of exactly equal score (a tie in float32, seen with random outputs) may come in either order."""
    def canonical(d: model.ImageDetections) -> model.ImageDetections:
        order = np.lexsort((d.boxes[:, 1], d.boxes[:, 0], d.class_id, -(d.cls_conf * d.loc_conf)))
        return model.ImageDetections(class_id=d.class_id[order], cls_conf=d.cls_conf[order],
                                     loc_conf=d.loc_conf[order], boxes=d.boxes[order],
                                     class_probs=d.class_probs[order])

    assert len(batched) == len(reference)
    for ours, theirs in zip(map(canonical, batched), map(canonical, reference)):
        assert ours.class_id.tolist() == theirs.class_id.tolist()
        np.testing.assert_allclose(ours.boxes, theirs.boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(ours.cls_conf, theirs.cls_conf)
        np.testing.assert_array_equal(ours.loc_conf, theirs.loc_conf)
        np.testing.assert_array_equal(ours.class_probs, theirs.class_probs)


@pytest.mark.parametrize("candidate_conf, max_detections", [(0.01, 100), (0.3, 7), (0.9, 100), (1.1, 100)])
def test_batched_post_process_equals_the_per_image_one(candidate_conf, max_detections):
    """decode_batch (one filter, grouped NMS, one copy) keeps the same detections, in the same order,
    as the per-image post-process it replaced: many candidates (NMS split into several calls), a
    top-k cut, few candidates, none at all."""
    outputs = random_outputs(n_images=6, anchors=1_500, num_classes=5, side=160, seed=0)
    ratios = [1.0, 0.5, 0.64, 0.32, 2.0, 0.4]
    sizes = [(160, 160), (320, 200), (250, 100), (500, 480), (80, 70), (400, 300)]
    batched = model.decode(outputs, ratios, sizes, candidate_conf=candidate_conf, max_detections=max_detections)
    reference = decode_per_image(outputs, ratios, sizes, candidate_conf=candidate_conf,
                                 max_detections=max_detections)
    if candidate_conf < 1:
        assert sum(len(d.class_id) for d in reference) > 0
    assert_same_detections(batched, reference)


def test_batched_post_process_flat_rows_are_grouped_by_image_best_first():
    outputs = random_outputs(n_images=4, anchors=400, num_classes=3, side=96, seed=1)
    dets = model.decode_batch(outputs, [1.0] * 4, [(96, 96)] * 4, candidate_conf=0.2, max_detections=10)
    assert np.all(np.diff(dets.image_index) >= 0)
    assert dets.counts(4).tolist() == [10, 10, 10, 10]
    for image in dets.per_image(4):
        score = image.cls_conf * image.loc_conf
        assert np.all(np.diff(score) <= 0)


def test_letterbox_on_the_device_matches_the_cpu_letterbox():
    """Same geometry and ratio as model.letterbox (cv2.INTER_LINEAR); pixels within one grey level."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(375, 500), (90, 60), (64, 64)]]
    canvas, ratios = model.letterbox_on_device([torch.from_numpy(i).permute(2, 0, 1) for i in images], 64)
    for image, ours, ratio in zip(images, canvas, ratios):
        expected, expected_ratio = model.letterbox(image, 64)
        assert ratio == expected_ratio
        difference = (ours - model.to_input(torch.from_numpy(expected[None]))[0]).abs()
        assert difference.max() <= 1.0 and difference.mean() < 0.3
