"""Scoring with Ray Data on a pool with planted bad files: nothing is lost, rows obey the schemas,
and the detections are those the model gives when called directly."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from raylib import images, model, schemas, storage
from raylib.config import Config, ModelConfig, ScoreConfig, StrategyConfig
from raylib.paths import RoundPaths
from raylib.score import score_pool
from tests.bad_images import corpus

CLASSES = ["red", "blue"]


def confident_weights(path: str) -> str:
    """A nano model whose heads are biased to fire everywhere, so an untrained model has detections."""
    torch.manual_seed(0)
    net = model.build_model("nano", len(CLASSES))
    for conv in list(net.head.obj_preds) + list(net.head.cls_preds):
        torch.nn.init.constant_(conv.bias, 0.5)
    model.save_weights(net, path, "nano", CLASSES)
    return path


def write_pool(folder: str, uri_root: str | None = None) -> tuple[str, dict[str, str]]:
    """Write the corpus under `folder` (local) and a manifest; returns (manifest uri, expected statuses)."""
    uri_root = uri_root or folder
    expected, ids, uris = {}, [], []
    for name, (data, status) in corpus().items():
        if data is not None:
            storage.write_bytes(storage.join(uri_root, "images", name), data)
        ids.append(f"images/{name}")
        uris.append(storage.join(uri_root, "images", name))
        expected[f"images/{name}"] = status
    manifest = storage.join(uri_root, "pool.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": ids, "uri": uris}), schemas.POOL, "pool"), manifest)
    return manifest, expected


def config(**score) -> Config:
    options = {"batch_size": 4, "max_pixels": 2_000_000, "max_detections": 20, **score}
    return Config(model=ModelConfig(input_size=96), score=ScoreConfig(**options),
                  strategy=StrategyConfig(min_score=0.2))


def check_outputs(rp: RoundPaths, expected: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    status = schemas.check(storage.read_table(rp.image_status), schemas.IMAGE_STATUS, "image_status")
    detections = schemas.check(storage.read_table(rp.detections), schemas.DETECTIONS, "detections")
    ids = status.column("image_id").to_pylist()
    assert sorted(ids) == sorted(expected), "exactly one status row per pool image"
    got = dict(zip(ids, status.column("status").to_pylist()))
    assert got == expected
    for image_id, error in zip(ids, status.column("error").to_pylist()):
        if expected[image_id] == "error":
            assert image_id in error  # the message names the input
    counts = dict(zip(ids, status.column("n_detections").to_pylist()))
    per_image = detections.group_by("image_id").aggregate([("score", "count")]).to_pydict()
    assert dict(zip(per_image["image_id"], per_image["score_count"])) == {k: v for k, v in counts.items() if v}
    return status, detections


def test_scoring_records_every_image_and_only_confident_detections(ray_session, tmp_path):
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 3)
    summary = score_pool(manifest, weights, rp, config(), CLASSES)
    assert summary.n_images == len(expected)
    assert summary.n_error == sum(s == "error" for s in expected.values())
    status, detections = check_outputs(rp, expected)
    assert summary.n_detections == detections.num_rows > 0
    frame = detections.to_pandas()
    assert (frame["round"] == 3).all()
    assert (frame["cls_conf"] * frame["loc_conf"] > 0.2).all()
    assert np.allclose(frame["score"], frame["cls_conf"] * frame["loc_conf"], atol=1e-6)
    assert (frame["x1"] >= 0).all() and (frame["y1"] >= 0).all()
    assert (frame["x2"] <= 200).all() and (frame["y2"] <= 150).all()
    assert frame["class_probs"].map(len).eq(len(CLASSES)).all()


def test_scores_equal_a_direct_model_call(ray_session, tmp_path):
    manifest, _ = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 0)
    score_pool(manifest, weights, rp, config(), CLASSES)
    frame = storage.read_table(rp.detections).to_pandas()
    net = model.load_model("nano", len(CLASSES), weights).eval()
    image = images.decode_image(open(tmp_path / "pool" / "images" / "good_1.png", "rb").read(), "x")
    canvas, ratio = model.letterbox(image, 96)
    with torch.no_grad():
        (direct,) = model.decode(net(model.to_input(torch.from_numpy(canvas[None]))), [ratio],
                                 [image.shape[:2]], max_detections=20)
    keep = direct.cls_conf * direct.loc_conf > 0.2
    ours = frame[frame["image_id"] == "images/good_1.png"].sort_values("score", ascending=False)
    theirs = np.sort(direct.cls_conf[keep] * direct.loc_conf[keep])[::-1]
    assert len(ours) == keep.sum() > 0
    assert np.allclose(ours["score"].to_numpy(), theirs, atol=1e-5)


def test_rerun_replaces_outputs_instead_of_adding(ray_session, tmp_path):
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 0)
    first = score_pool(manifest, weights, rp, config(), CLASSES)
    second = score_pool(manifest, weights, rp, config(), CLASSES)
    assert first == second
    check_outputs(rp, expected)


@pytest.mark.s3
def test_scoring_reads_and_writes_s3(ray_session, s3_bucket, tmp_path):
    manifest, expected = write_pool(str(tmp_path / "unused"), uri_root=f"{s3_bucket}/pool")
    weights = confident_weights(str(tmp_path / "w.pt"))
    storage.write_bytes(f"{s3_bucket}/weights/w.pt", open(weights, "rb").read())
    rp = RoundPaths(f"{s3_bucket}/run", 1)
    summary = score_pool(manifest, f"{s3_bucket}/weights/w.pt", rp, config(), CLASSES)
    assert summary.n_images == len(expected)
    check_outputs(rp, expected)
    assert not os.path.exists(tmp_path / "run")
