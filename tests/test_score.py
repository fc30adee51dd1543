"""Scoring with Ray Data on a pool with planted bad files: nothing is lost, rows obey the schemas,
and the detections are those the model gives when called directly."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raylib import images, model, schemas, storage
from raylib.config import Config, DataConfig, ModelConfig, ScoreConfig, StrategyConfig
from raylib.paths import RoundPaths
from raylib.score import ScoringSetup, score_pool
from raylib.stages import scoring
from tests.bad_images import corpus, scene

CLASSES = ["red", "blue"]
MIN_SCORE = 0.2

# Why each bad file fails: a part of its status message (the message also names the image).
REASONS = {
    "images/zero_bytes.jpg": "is empty (0 bytes)",
    "images/truncated.jpg": "corrupt header",  # cut inside the JPEG header
    "images/truncated_scan.jpg": "could not be decoded (truncated)",  # cut inside the pixel data
    "images/truncated.png": "could not be decoded (truncated)",
    "images/not_an_image.jpg": "is not a readable image file",
    "images/bomb.png": "over the limit",  # header declares 100000 x 100000
    "images/bomb_header_only.png": "is not a readable image file",
    "images/missing.jpg": "is missing at its uri",
}


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG that declares huge dimensions: tiny on disk, 10^10 pixels if decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def truncated_scan_jpeg() -> bytes:
    buffer = io.BytesIO()
    scene(seed=3).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    return data[: int(len(data) * 0.7)]


def pool_files() -> dict[str, tuple[bytes | None, str]]:
    """The shared bad-file corpus plus a real decompression bomb and a JPEG cut in its pixel data."""
    files = dict(corpus())
    files["bomb_header_only.png"] = files.pop("bomb.png")  # IHDR without IDAT: not even an image
    files["bomb.png"] = (png_bomb(), "error")
    files["truncated_scan.jpg"] = (truncated_scan_jpeg(), "error")
    gray = io.BytesIO()
    scene(150, 110, seed=4).convert("L").save(gray, "JPEG", quality=90)
    files["gray.jpg"] = (gray.getvalue(), "ok")
    return files


def confident_weights(path: str) -> str:
    """An untrained nano model whose detections differ from image to image, saved to `path`.

    Freshly initialised YOLOX in eval mode has vanishing activations (BatchNorm running stats of
    0/1), so every anchor gets the same score and NMS is a coin toss between exact ties. Setting the
    BatchNorm statistics from a few generated images gives each detection its own score; the
    prediction biases are set so that some of the candidates clear min_score and some don't."""
    torch.manual_seed(0)
    net = model.build_model("nano", len(CLASSES))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # running stats = the plain average over the calibration pass
    rng = np.random.default_rng(0)
    shapes = [(160, 120), (200, 150), (120, 160), (96, 96)]
    calibration = np.stack(
        [model.letterbox(np.asarray(scene(*shapes[s % 4], seed=s))[:, :, ::-1].copy(), 96)[0] for s in range(12)]
        + [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)])
    net.train()
    with torch.no_grad():
        features = net.backbone(model.to_input(torch.from_numpy(calibration)))
        for level, x in enumerate(features):
            x = net.head.stems[level](x)
            net.head.cls_convs[level](x)
            net.head.reg_convs[level](x)
    for conv in list(net.head.obj_preds) + list(net.head.cls_preds):
        torch.nn.init.constant_(conv.bias, 0.0)
    model.save_weights(net.eval(), path, "nano", CLASSES)
    return path


def write_pool(folder: str, uri_root: str | None = None, manifest_uri: str | None = None,
               ) -> tuple[str, dict[str, str]]:
    """Write the corpus under `uri_root` (default `folder`) and a manifest; returns (manifest uri,
    expected status per image id)."""
    uri_root = uri_root or folder
    expected, ids, uris = {}, [], []
    for name, (data, status) in pool_files().items():
        if data is not None:
            storage.write_bytes(storage.join(uri_root, "images", name), data)
        ids.append(f"images/{name}")
        uris.append(storage.join(uri_root, "images", name))
        expected[f"images/{name}"] = status
    manifest = manifest_uri or storage.join(uri_root, "pool.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": ids, "uri": uris}), schemas.POOL, "pool"), manifest)
    return manifest, expected


def config(strategy: str = "cls_iou", **score) -> ScoringSetup:
    options = {"batch_size": 4, "num_actors": 1, "max_detections": 20, **score}
    return scoring(Config(data=DataConfig(max_pixels=2_000_000), model=ModelConfig(size="nano", input_size=96),
                          score=ScoreConfig(**options), strategy=StrategyConfig(name=strategy, min_score=MIN_SCORE)))


def check_outputs(rp: RoundPaths, expected: dict[str, str], folder: str | None = None) -> tuple[pa.Table, pa.Table]:
    """Both outputs pass their schemas; exactly one status row per pool image with the expected
    status; error messages name their image; detections per image match n_detections; the size of
    every good image in `folder` (when given) is the stored one."""
    status = schemas.check(storage.read_table(rp.image_status), schemas.IMAGE_STATUS, "image_status")
    detections = schemas.check(storage.read_table(rp.detections), schemas.DETECTIONS, "detections")
    ids = status.column("image_id").to_pylist()
    assert sorted(ids) == sorted(expected), "exactly one status row per pool image"
    got = dict(zip(ids, status.column("status").to_pylist()))
    assert got == expected
    for image_id, error in zip(ids, status.column("error").to_pylist()):
        if expected[image_id] == "error":
            assert image_id in error  # the message names the input
        else:
            assert error is None
    sizes = dict(zip(ids, zip(status.column("height").to_pylist(), status.column("width").to_pylist())))
    for image_id, size in image_sizes(folder, expected).items() if folder else []:
        assert sizes[image_id] == size, image_id
    counts = dict(zip(ids, status.column("n_detections").to_pylist()))
    per_image = detections.group_by("image_id").aggregate([("score", "count")]).to_pydict()
    assert dict(zip(per_image["image_id"], per_image["score_count"])) == {k: v for k, v in counts.items() if v}
    return status, detections


def image_sizes(folder: str, expected: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(height, width) of every good image, as stored."""
    sizes = {}
    for image_id, status in expected.items():
        if status == "ok":
            with open(os.path.join(folder, image_id), "rb") as handle:
                sizes[image_id] = images.decode_image(handle.read(), image_id).shape[:2]
    return sizes


# Above the number of candidates: no top-k cut whose 20th and 21st scores could swap on float noise.
CROSS_CHECK_MAX_DETECTIONS = 500


def direct_rows(path: str, net: torch.nn.Module, side: int) -> np.ndarray:
    """The model called by hand on one image: [class_id, score, x1, y1, x2, y2] of the kept detections."""
    with open(path, "rb") as handle:
        image = images.decode_image(handle.read(), path)
    canvas, ratio = model.letterbox(image, side)
    with torch.inference_mode():
        outputs = net(model.to_input(torch.from_numpy(canvas[None])))
    (dets,) = model.decode(outputs, [ratio], [image.shape[:2]], max_detections=CROSS_CHECK_MAX_DETECTIONS)
    score = dets.cls_conf * dets.loc_conf
    keep = score > MIN_SCORE
    return np.column_stack([dets.class_id[keep], score[keep], dets.boxes[keep]]).astype(np.float64)


def assert_same_rows(ours: np.ndarray, theirs: np.ndarray, what: str, tolerance: float = 1e-3) -> None:
    """Same detections in any order: a one-to-one match, every value within `tolerance` (default:
    float noise of batching)."""
    assert ours.shape == theirs.shape, f"{what}: {len(ours)} rows, direct call gives {len(theirs)}"
    if not len(ours):
        return
    distance = np.abs(ours[:, None, :] - theirs[None, :, :]).max(axis=2)
    match = distance.argmin(axis=1)
    assert len(set(match.tolist())) == len(match), f"{what}: rows do not match one to one"
    assert distance[np.arange(len(match)), match].max(initial=0) < tolerance, what


@pytest.mark.parametrize("device_decode", [False, True], ids=["cpu_decode", "device_decode"])
def test_scoring_records_every_image_and_the_detections_of_a_direct_model_call(ray_session, tmp_path, device_decode):
    """One status row per image with its error, only confident detections inside the image, and on every
    good image the rows of the model called by hand (one scoring run serves both checks: CI time).

    Also the CPU twin of the GPU decode path (device_decode: JPEG bytes to the actor, decoded there with
    torchvision's decoder on the actor's device; everything else decoded by the CPU tasks): the same
    status rows and error messages. The direct call decodes with PIL and letterboxes with OpenCV; the
    device path resizes with torch (pixels within a grey level of OpenCV's), which moves boxes by a
    fraction of a pixel (0.2 seen) and scores by less: same rows, compared within half a pixel.

    The CPU variant scores for `strategy=cls_iou_diverse` (cls_iou's scores, plus one embedding per ok
    image): its embeddings are the model's neck averaged by hand, and its detections the same rows."""
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 3)
    strategy = "cls_iou" if device_decode else "cls_iou_diverse"
    summary = score_pool(manifest, weights, rp, config(strategy, max_detections=CROSS_CHECK_MAX_DETECTIONS,
                                                       device_decode=device_decode), CLASSES)
    assert summary.n_images == summary.n_ok + summary.n_error == len(expected)
    assert summary.n_error == sum(s == "error" for s in expected.values()) == len(REASONS)
    status, detections = check_outputs(rp, expected, str(tmp_path / "pool"))
    errors = dict(zip(status.column("image_id").to_pylist(), status.column("error").to_pylist()))
    for image_id, reason in REASONS.items():
        assert reason in errors[image_id], errors[image_id]
    # Refused from the header, before any pixel is decoded: 10^10 pixels is past even Pillow's own check.
    assert "over the limit of 2147 MP that no data.max_pixels can raise" in errors["images/bomb.png"]
    assert summary.n_detections == detections.num_rows > 0
    frame = detections.to_pandas()
    assert (frame["round"] == 3).all()
    assert (frame["score"] > MIN_SCORE).all()
    assert np.allclose(frame["score"], frame["cls_conf"] * frame["loc_conf"], atol=1e-6)
    assert frame["class_probs"].map(len).eq(len(CLASSES)).all()
    sizes = image_sizes(str(tmp_path / "pool"), expected)
    for image_id, rows in frame.groupby("image_id"):
        height, width = sizes[image_id]
        assert (rows["x1"] >= 0).all() and (rows["y1"] >= 0).all()
        assert (rows["x2"] <= width).all() and (rows["y2"] <= height).all(), image_id
        assert (rows["x1"] <= rows["x2"]).all() and (rows["y1"] <= rows["y2"]).all()

    net = model.load_model("nano", len(CLASSES), weights).eval()
    checked = 0
    for image_id, image_status in expected.items():
        if image_status != "ok":
            continue
        theirs = direct_rows(str(tmp_path / "pool" / image_id), net, 96)
        ours = frame[frame["image_id"] == image_id][["class_id", "score", "x1", "y1", "x2", "y2"]]
        assert len(theirs) > 0, image_id
        assert_same_rows(ours.to_numpy(np.float64), theirs, image_id, 0.5 if device_decode else 1e-3)
        checked += 1
    assert checked == sum(s == "ok" for s in expected.values())

    if device_decode:
        assert not storage.exists(rp.embeddings)  # cls_iou: no embeddings written
        return
    table = schemas.check(storage.read_table(rp.embeddings), schemas.EMBEDDINGS, "embeddings")
    stored = dict(zip(table.column("image_id").to_pylist(), table.column("embedding").to_pylist()))
    assert sorted(stored) == sorted(i for i, s in expected.items() if s == "ok")
    for image_id, embedding in stored.items():
        with open(tmp_path / "pool" / image_id, "rb") as handle:
            canvas, _ = model.letterbox(images.decode_image(handle.read(), image_id), 96)
        with torch.inference_mode():
            neck = net.backbone(model.to_input(torch.from_numpy(canvas[None])))
        by_hand = np.concatenate([level[0].mean(dim=(1, 2)).numpy() for level in neck])  # P3, P4, P5 pooled
        by_hand /= np.linalg.norm(by_hand)  # stored at unit length
        assert len(embedding) == len(by_hand) == 64 + 128 + 256  # nano's neck widths
        assert np.allclose(np.array(embedding, np.float32), by_hand, rtol=1e-2, atol=1e-3), image_id  # float16


@pytest.mark.s3
@pytest.mark.parametrize("manifest_on", ["s3", "local"])
def test_scoring_reads_and_writes_s3(ray_session, s3_bucket, tmp_path, manifest_on):
    """Images and outputs on S3; the manifest on S3 too, or local (filesystems resolved apart)."""
    manifest_uri = None if manifest_on == "s3" else str(tmp_path / "pool.parquet")
    manifest, expected = write_pool(str(tmp_path / "unused"), uri_root=f"{s3_bucket}/pool",
                                    manifest_uri=manifest_uri)
    weights = confident_weights(str(tmp_path / "w.pt"))
    with open(weights, "rb") as handle:
        storage.write_bytes(f"{s3_bucket}/weights/w.pt", handle.read())
    rp = RoundPaths(f"{s3_bucket}/run", 1)
    summary = score_pool(manifest, f"{s3_bucket}/weights/w.pt", rp, config(), CLASSES)
    assert summary.n_images == len(expected)
    check_outputs(rp, expected)
    # Read back with plain pyarrow from the S3 server, as any other tool would.
    fs, path = storage.resolve(rp.image_status)
    status = pq.read_table(path, filesystem=fs)
    assert status.num_rows == len(expected)
    errors = dict(zip(status.column("image_id").to_pylist(), status.column("error").to_pylist()))
    assert "is missing at its uri" in errors["images/missing.jpg"]
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(f"{s3_bucket}/run")


def test_floor_and_nesting_without_ray():
    """Pseudo-code 1's floor is strict (a confidence of exactly min_score is dropped); error rows and
    images without kept detections get empty lists; the strategy scores every kept detection."""
    from raylib.model import BatchDetections
    from raylib.scored import keep_confident, nest_detections

    dets = BatchDetections(
        image_index=np.array([0, 0, 0, 2], np.int64),
        class_id=np.array([0, 1, 1, 0], np.int16), cls_conf=np.array([0.5, 0.4, 0.9, 0.3], np.float32),
        loc_conf=np.array([0.4, 0.5, 0.9, 0.5], np.float32),
        boxes=np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [1, 1, 2, 2]], np.float32),
        class_probs=np.array([[0.5, 0.1], [0.3, 0.4], [0.05, 0.9], [0.3, 0.2]], np.float32))
    kept = keep_confident(dets, min_score=0.2)  # 0.5 x 0.4 == 0.2 exactly in float32: dropped
    assert kept.class_id.tolist() == [1] and kept.boxes.tolist() == [[9, 10, 11, 12]]
    assert kept.image_index.tolist() == [0]
    strategy = StrategyConfig(name="margin", min_score=MIN_SCORE)
    nested = nest_detections(kept, np.array(["a", "b", "c"], object), strategy, keep_class_probs=True)
    rows = nested.to_pylist()
    assert [len(r) for r in rows] == [1, 0, 0]
    assert rows[0][0]["score"] == pytest.approx(0.85) and rows[0][0]["class_probs"] == pytest.approx([0.05, 0.9])
    flat = nest_detections(kept, np.array(["a"], object), strategy, keep_class_probs=False)
    assert flat.to_pylist()[0][0]["class_probs"] is None


def test_probe_sends_only_complete_rgb_and_gray_jpegs_to_the_device_decoder():
    """probe reads headers only: JPEG in RGB or L -> device; CMYK JPEG, PNG, a JPEG cut before its
    end marker -> CPU; empty and over-limit files raise the CPU decoder's errors."""
    files = dict(pool_files())
    device = {name: images.probe(data, name, 2_000_000)[2] for name, (data, status) in files.items()
              if status == "ok" or name == "truncated_scan.jpg"}
    assert device == {"good_0.jpg": True, "gray.jpg": True, "exif_rotated.jpg": True, "cmyk.jpg": False,
                      "good_1.png": False, "gray.png": False, "rgba.png": False, "palette.png": False,
                      "gray16.png": False, "png_named.jpg": False, "truncated_scan.jpg": False}
    assert images.probe(files["good_1.png"][0], "good_1.png", 2_000_000)[:2] == (200, 150)
    with pytest.raises(images.ImageError, match="empty"):
        images.probe(b"", "zero.jpg", 2_000_000)
    with pytest.raises(images.ImageError, match="over the limit"):
        images.probe(files["bomb.png"][0], "bomb.png", 2_000_000)


def test_device_decode_of_a_batch_equals_the_cpu_decoder():
    """decode_jpegs (torchvision's decoder, here on CPU) gives the pixels of decode_image, BGR, for
    RGB and gray JPEGs; bytes it refuses come back as None for the CPU fallback."""
    files = pool_files()
    names = ["good_0.jpg", "gray.jpg", "exif_rotated.jpg"]
    decoded = images.decode_jpegs([files[n][0] for n in names] + [b"\xff\xd8 not a jpeg"], torch.device("cpu"))
    assert decoded[-1] is None
    for name, tensor in zip(names, decoded):
        expected = images.decode_image(files[name][0], name)
        ours = tensor.permute(1, 2, 0).numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2, name


def test_rerun_with_two_actors_replaces_a_one_actor_run_with_the_same_outputs(ray_session, tmp_path):
    """A rerun of the score stage into the same round folder replaces its outputs (stray files of a
    crashed attempt included) instead of adding to them; and it is deterministic: one actor or two give
    identical detections and selections (rows are per image; which actor scores a batch must not matter).
    One test for both: each scoring run costs ~20 s of CI."""
    from raylib.select import select_round

    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    strategy = StrategyConfig(k=3, min_score=MIN_SCORE)
    rp = RoundPaths(str(tmp_path / "run"), 0)
    outputs, summaries = [], []
    for num_actors in (1, 2):
        cfg = config(num_actors=num_actors)
        cfg.strategy = strategy
        summaries.append(score_pool(manifest, weights, rp, cfg, CLASSES))
        select_round(rp.detections, strategy, 0, rp, len(CLASSES))
        detections = storage.read_table(rp.detections).drop_columns(["class_probs"]).to_pandas()
        detections = detections.sort_values(["image_id", "class_id", "score", "x1", "y1"]).reset_index(drop=True)
        outputs.append((detections, storage.read_table(rp.selection).to_pandas(),
                        storage.read_table(rp.thresholds).to_pandas()))
        if num_actors == 1:  # left-overs of a crashed attempt: a stray file in each output directory
            for folder in (rp.detections, rp.image_status):
                storage.write_table(storage.read_table(folder), storage.join(folder, "stale-attempt.parquet"))
    check_outputs(rp, expected)  # one status row per image: the stray files are gone
    assert summaries[0] == summaries[1]
    assert len(outputs[0][0]) > 0 and len(outputs[0][1]) > 0, "the check needs detections and a selection"
    detections, selection, thresholds = outputs[1]
    assert detections.equals(outputs[0][0])
    assert selection.equals(outputs[0][1])
    assert thresholds.equals(outputs[0][2])


def test_compiled_scorer_compiles_once_and_gives_the_eager_rows_on_full_and_short_batches(tmp_path, capsys,
                                                                                          monkeypatch):
    """score.compile: the actor compiles the model at start-up (its time printed) for batches of
    batch_size; a full batch and a shorter one (padded, not compiled again) give the eager model's rows,
    error rows included, and a batch that raises is retried image by image on the eager model.
    (Without Ray: the actor class called directly, as Ray Data calls it.) Dynamo captures the graph and
    guards as with any backend; the graph runs on Dynamo's `eager` backend here, because Inductor's
    C++ build of it takes ~100 s of a 2-core CI. Its GPU twin compiles with Inductor."""
    import torch._dynamo

    from raylib.score import YoloxScorer, load_images

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: real_compile(model, backend="eager", **options))

    manifest, expected = write_pool(str(tmp_path / "pool"))
    rows = storage.read_table(manifest).to_pydict()
    weights = confident_weights(str(tmp_path / "w.pt"))
    batch_size = 8
    eager, compiled = (YoloxScorer(config(batch_size=batch_size, compile=on), weights, len(CLASSES), 0)
                       for on in (False, True))
    assert compiled.compiled is not None and eager.compiled is None
    assert "[score] compiled the model in" in capsys.readouterr().out
    torch._dynamo.utils.counters.clear()
    for start, stop in ((0, batch_size), (batch_size, batch_size + 3)):  # a full batch, a short one
        batch = load_images({k: np.array(v[start:stop], dtype=object) for k, v in rows.items()}, side=96,
                            max_pixels=2_000_000)
        ours, theirs = compiled(batch).to_pylist(), eager(batch).to_pylist()
        assert [r["status"] for r in ours] == [r["status"] for r in theirs]
        assert [r["error"] for r in ours] == [r["error"] for r in theirs]
        assert sum(r["n_detections"] for r in ours) > 0
        for a, b in zip(ours, theirs):
            as_rows = [np.array([[d["class_id"], d["score"], d["x1"], d["y1"], d["x2"], d["y2"]]
                                 for d in r["detections"]], np.float64).reshape(-1, 6) for r in (a, b)]
            assert_same_rows(*as_rows, a["image_id"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0, "a short batch compiled again"

    def out_of_memory(inputs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    compiled.compiled = out_of_memory  # the compiled model fails the batch: each image goes to the eager one
    retried = compiled(batch).to_pylist()
    assert [(r["status"], r["n_detections"]) for r in retried] == [(r["status"], r["n_detections"]) for r in theirs]
