"""YOLOX wrapper: every size builds with the right output shape; weights save/load safely, locally and on S3."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from raylib import model, storage

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
