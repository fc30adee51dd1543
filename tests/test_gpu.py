"""GPU paths, each beside the CPU twin that CI runs:

  fp16 + channels_last scoring actor  ~ tests/test_score.py::test_scoring_records_every_image_and_the_detections_of_a_direct_model_call
  score_pool with one GPU actor       ~ tests/test_score.py::test_scoring_records_every_image_and_the_detections_of_a_direct_model_call
  nvJPEG decode + letterbox on the GPU, fallbacks, one row per image
                                      ~ the same test, [device_decode] (torchvision's CPU decoder)
  batched post-process on the GPU     ~ tests/test_model.py::test_batched_post_process_equals_the_per_image_one
  AMP training (fp16, GradScaler)     ~ tests/test_train.py::test_fp16_autocast_steps_on_cpu_fit_one_batch_without_skipped_steps
  score.compile (Inductor, CUDA, threads)
                                      ~ tests/test_score.py::test_compiled_scorer_compiles_once_and_gives_the_eager_rows_on_full_and_short_batches

Marked `gpu`: skipped where CUDA is absent (conftest), never silently passed.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from raylib import storage
from raylib.config import Config, ModelConfig, ScoreConfig, StrategyConfig
from raylib.model import to_input
from raylib.paths import RoundPaths
from raylib.score import ScoringSetup, YoloxScorer, load_images, read_images, score_pool
from raylib.stages import scoring
from tests.bad_images import scene
from tests.reference_decode import decode_per_image
from tests.test_model import assert_same_detections, random_outputs
from tests.test_score import CLASSES, MIN_SCORE, REASONS, check_outputs, confident_weights, pool_files, write_pool
from tests.test_train import overfit_one_batch

pytestmark = pytest.mark.gpu


def _batch(tmp_path, n: int = 6) -> dict[str, np.ndarray]:
    ids, uris = [], []
    for i in range(n):
        buffer = io.BytesIO()
        scene(160 + 16 * i, 120, seed=i).save(buffer, "JPEG", quality=95)
        uri = str(tmp_path / f"img_{i}.jpg")
        storage.write_bytes(uri, buffer.getvalue())
        ids.append(f"img_{i}.jpg")
        uris.append(uri)
    return load_images({"image_id": np.array(ids, dtype=object), "uri": np.array(uris, dtype=object)},
                       side=96, max_pixels=2_000_000)


def _config(gpu: bool) -> ScoringSetup:
    score = ScoreConfig(batch_size=4, num_actors=1, max_detections=20, num_gpus_per_actor=1.0 if gpu else 0.0,
                        fp16=gpu, channels_last=gpu)
    return scoring(Config(model=ModelConfig(size="nano", input_size=96), score=score,
                          strategy=StrategyConfig(min_score=MIN_SCORE)))


def test_fp16_channels_last_actor_matches_the_fp32_cpu_actor(tmp_path):
    weights = confident_weights(str(tmp_path / "w.pt"))
    batch = _batch(tmp_path)
    gpu_scorer = YoloxScorer(_config(gpu=True), weights, len(CLASSES), round_idx=0)
    cpu_scorer = YoloxScorer(_config(gpu=False), weights, len(CLASSES), round_idx=0)
    assert gpu_scorer.device.type == "cuda" and gpu_scorer.half and gpu_scorer.channels_last

    # The raw outputs agree within fp16's precision. (Detections after NMS are not compared one by one:
    # fp16 may swap near-tied boxes, which is NMS working, not a difference of the path.)
    inputs = to_input(torch.from_numpy(batch["image"]))
    with torch.inference_mode():
        reference = cpu_scorer.model(inputs)
        ours = gpu_scorer.model(inputs.to("cuda").half().contiguous(memory_format=torch.channels_last)).float().cpu()
    assert (ours[..., 4:] - reference[..., 4:]).abs().max() < 0.02  # loc_conf and class probabilities
    assert (ours[..., :4] - reference[..., :4]).abs().max() < 1.0  # box centre/size in input pixels

    rows = gpu_scorer(batch).to_pylist()
    assert [r["image_id"] for r in rows] == list(batch["image_id"])
    for row, height, width in zip(rows, batch["height"], batch["width"]):
        assert row["status"] == "ok" and row["n_detections"] == len(row["detections"]) > 0
        for det in row["detections"]:
            assert det["score"] > MIN_SCORE and 0 <= det["x1"] < det["x2"] <= width and 0 <= det["y1"] < det["y2"] <= height


def test_score_pool_with_a_gpu_actor_records_every_image(ray_session, tmp_path):
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 0)
    cfg = _config(gpu=True)
    cfg.score.num_actors, cfg.score.num_cpus_per_actor, cfg.score.decode_num_cpus = 1, 0.5, 0.5
    summary = score_pool(manifest, weights, rp, cfg, CLASSES)
    assert summary.n_images == len(expected)
    check_outputs(rp, expected)


@pytest.mark.parametrize("candidate_conf", [0.01, 0.3, 0.9])
def test_batched_post_process_on_cuda_equals_the_per_image_one(candidate_conf):
    outputs = random_outputs(n_images=16, anchors=8_400, num_classes=20, side=640, seed=0)
    ratios, sizes = [1.28] * 16, [(375, 500)] * 16
    batched = model_decode_on_cuda(outputs, ratios, sizes, candidate_conf)
    assert_same_detections(batched, decode_per_image(outputs, ratios, sizes, candidate_conf=candidate_conf))


def model_decode_on_cuda(outputs, ratios, sizes, candidate_conf):
    from raylib.model import decode
    return decode(outputs.to("cuda"), ratios, sizes, candidate_conf=candidate_conf)


def test_gpu_decode_path_gives_one_row_per_image_and_the_cpu_paths_detections(tmp_path):
    """read_images -> YoloxScorer on the GPU (nvJPEG for RGB and gray JPEGs, CPU-decoded canvases for
    PNG, CMYK, truncated scans; the CPU errors for the rest) against load_images -> the fp32 CPU actor."""
    ids, uris, expected = [], [], {}
    for name, (data, status) in pool_files().items():
        uri = str(tmp_path / name)
        if data is not None:
            storage.write_bytes(uri, data)
        ids.append(name)
        uris.append(uri)
        expected[name] = status
    manifest = {"image_id": np.array(ids, dtype=object), "uri": np.array(uris, dtype=object)}
    gpu_cfg, cpu_cfg = _config(gpu=True), _config(gpu=False)
    gpu_cfg.score.device_decode = True
    for cfg in (gpu_cfg, cpu_cfg):  # no top-k cut whose last rows could swap on fp16 noise
        cfg.score.max_detections = 500
    weights = confident_weights(str(tmp_path / "w.pt"))
    gpu_rows = YoloxScorer(gpu_cfg, weights, len(CLASSES), 0)(read_images(manifest, 96, 2_000_000)).to_pylist()
    cpu_rows = YoloxScorer(cpu_cfg, weights, len(CLASSES), 0)(load_images(manifest, 96, 2_000_000)).to_pylist()
    assert [r["image_id"] for r in gpu_rows] == ids
    for gpu_row, cpu_row in zip(gpu_rows, cpu_rows):
        name = gpu_row["image_id"]
        assert gpu_row["status"] == cpu_row["status"] == expected[name], name
        assert gpu_row["error"] == cpu_row["error"]
        if f"images/{name}" in REASONS:
            assert REASONS[f"images/{name}"] in gpu_row["error"]
        if expected[name] == "ok":  # fp16 and the GPU resize move boxes and scores a little
            assert (gpu_row["width"], gpu_row["height"]) == (cpu_row["width"], cpu_row["height"])

            def table(row):
                return np.array([[d["class_id"], d["score"], d["x1"], d["y1"], d["x2"], d["y2"]]
                                 for d in row["detections"]], dtype=np.float64).reshape(-1, 6)
            ours, theirs = table(gpu_row), table(cpu_row)
            assert len(theirs) > 0, name
            # Rows with a partner within 2 px (same class, score within 2) on the other side; a
            # detection within fp16 noise of min_score may fall on either side of it.
            distance = np.abs(ours[:, None, :] - theirs[None, :, :]).max(axis=2)
            assert (distance.min(axis=1) < 2.0).mean() >= 0.9, name
            assert (distance.min(axis=0) < 2.0).mean() >= 0.9, name


def test_score_pool_with_gpu_decode_and_concurrent_batches_records_every_image(ray_session, tmp_path):
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    rp = RoundPaths(str(tmp_path / "run"), 0)
    cfg = _config(gpu=True)
    cfg.score.device_decode, cfg.score.concurrent_batches = True, 3
    cfg.score.num_actors, cfg.score.num_cpus_per_actor, cfg.score.decode_num_cpus = 1, 1, 0.5
    summary = score_pool(manifest, weights, rp, cfg, CLASSES)
    assert summary.n_images == len(expected)
    check_outputs(rp, expected, str(tmp_path / "pool"))


def test_compiled_gpu_actor_in_score_pool_gives_the_eager_rows(ray_session, tmp_path):
    """score.compile with Inductor on CUDA, fp16 + channels_last, nvJPEG, three batches in flight (threads
    share the compiled graph): every image's row, the statuses of the eager run and its detection counts
    (within one per image: Inductor's fp16 kernels round apart from eager's at the 0.2 floor)."""
    manifest, expected = write_pool(str(tmp_path / "pool"))
    weights = confident_weights(str(tmp_path / "w.pt"))
    counts = []
    for compiled in (False, True):
        rp = RoundPaths(str(tmp_path / f"run_{compiled}"), 0)
        cfg = _config(gpu=True)
        cfg.score.device_decode, cfg.score.concurrent_batches, cfg.score.compile = True, 3, compiled
        cfg.score.num_actors, cfg.score.num_cpus_per_actor, cfg.score.decode_num_cpus = 1, 1, 0.5
        assert score_pool(manifest, weights, rp, cfg, CLASSES).n_images == len(expected)
        status, _ = check_outputs(rp, expected, str(tmp_path / "pool"))
        counts.append(status.sort_by("image_id").select(["image_id", "status", "n_detections"]).to_pylist())
    assert [(r["image_id"], r["status"]) for r in counts[0]] == [(r["image_id"], r["status"]) for r in counts[1]]
    assert all(abs(a["n_detections"] - b["n_detections"]) <= 1 for a, b in zip(*counts))
    assert sum(r["n_detections"] for r in counts[1]) > 0


def test_amp_training_on_cuda_fits_one_batch_without_skipped_steps():
    losses, skipped = overfit_one_batch(torch.device("cuda"), steps=30)
    assert all(np.isfinite(losses))
    assert skipped <= 2, f"{skipped} of 30 steps skipped (fp16 gradient overflow)"
    assert min(losses[-5:]) < 0.8 * losses[0], losses
