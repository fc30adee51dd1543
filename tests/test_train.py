"""Training: data pieces without Ray (fast), then Ray Train runs on tiny generated images (slow).

The Ray runs use a nano model at input 64 on a dozen 64x64 images: seconds of compute, the rest is
Ray start-up. They check plumbing (reports, checkpoints, resume, S3), not accuracy.
"""
from __future__ import annotations

import logging
import os
import re

import cv2
import numpy as np
import pytest
import ray.train
import torch

from raylib import storage
from raylib.training import train, data as train_data, engine as train_engine
from raylib.config import Config, ModelConfig, TrainConfig
from raylib.model import build_model, load_model
from tests.helpers import CLASSES, make_dataset, tiny_config

# ------------------------------------------------------------------------------ without Ray


def test_load_split_shards_by_rank_and_caches_under_hashed_names(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data")
    cache = train_data.ImageCache(str(tmp_path / "cache"))
    shards = [train_data.load_split(labels, manifest, "train", rank, 2, cache)[0] for rank in range(2)]
    ids = [[s.image_id for s in shard] for shard in shards]
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) + len(ids[1]) == 8
    for sample in shards[0] + shards[1]:
        assert os.path.dirname(sample.path) == str(tmp_path / "cache")
        assert re.fullmatch(r"[0-9a-f]{64}", os.path.basename(sample.path))  # never derived from the id
        assert (sample.height, sample.width) == (64, 80)
    background = next(s for s in shards[0] + shards[1] if s.image_id == "set/000")
    assert background.targets.shape == (0, 5)


def test_load_split_targets_are_each_images_objects_in_order(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data", n_train=7)
    samples, split_labels = train_data.load_split(labels, manifest, "train", 1, 3, train_data.ImageCache(str(tmp_path / "c")))
    objects = dict(zip(split_labels.column("image_id").to_pylist(), split_labels.column("objects").to_pylist()))
    assert [s.image_id for s in samples] == sorted(objects)[1::3]
    for sample in samples:  # the rows the per-object loop built before the targets came from Arrow columns
        expected = np.array([[o["x1"], o["y1"], o["x2"], o["y2"], o["class_id"]] for o in objects[sample.image_id]],
                            dtype=np.float32).reshape(-1, 5)
        assert sample.targets.dtype == np.float32 and np.array_equal(sample.targets, expected)


def test_load_split_skips_undecodable_images(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data", n_train=3, n_val=0)
    with open(str(tmp_path / "data" / "img_001.jpg"), "wb") as handle:
        handle.write(b"broken")
    samples, split_labels = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")))
    assert [s.image_id for s in samples] == ["set/000", "set/002"] and split_labels.num_rows == 3


def test_an_image_whose_pixels_dont_decode_is_a_blank_item_without_objects_and_one_log_line(tmp_path, caplog):
    """Its header reads (load_split keeps it: sizes come from headers), its pixels don't: training goes on
    with a blank item in its place, whose targets are empty, and says so once."""
    labels, manifest = make_dataset(tmp_path / "data", n_train=3, n_val=0)
    path = str(tmp_path / "data" / "img_001.jpg")
    with open(path, "rb") as handle:
        whole = handle.read()
    with open(path, "wb") as handle:
        handle.write(whole[:len(whole) // 2])  # the header and half the scan
    samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")))
    assert [s.image_id for s in samples] == ["set/000", "set/001", "set/002"] and len(samples[1].targets)
    dataset = train_data.LabelledImages(samples, 64)
    with caplog.at_level(logging.WARNING, logger="raylib.training.data"):
        for _ in range(2):
            image, targets, (height, width), index = dataset.pull_item(1)
            assert index == 1 and (height, width) == (64, 80) and targets.shape == (0, 5)
            assert image.shape == (51, 64, 3) and (image == 114).all()  # 64 x 80 scaled to fit 64
    [record] = [r for r in caplog.records if "set/001" in r.getMessage()]
    assert "left out of training" in record.getMessage()
    image, targets, _, _ = dataset.pull_item(2)  # the others as they are
    assert image.shape == (51, 64, 3) and np.array_equal(targets, dataset.load_anno(2))


def test_over_limit_labelled_image_is_left_out_of_training_with_a_log_line(tmp_path, caplog):
    labels, manifest = make_dataset(tmp_path / "data", n_train=3, n_val=0)
    big = np.full((64, 200, 3), 110, np.uint8)  # 12,800 pixels; the others are 64 x 80 = 5,120
    cv2.imwrite(str(tmp_path / "data" / "img_002.jpg"), big)
    with caplog.at_level(logging.WARNING, logger="raylib.training.data"):
        samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")),
                                      max_pixels=10_000)
    assert [s.image_id for s in samples] == ["set/000", "set/001"]
    [record] = [r for r in caplog.records if "set/002" in r.getMessage()]
    assert "left out of training" in record.getMessage() and "over the limit" in record.getMessage()


def test_train_dataset_uses_yolox_augmentations_and_closes_them(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data")
    samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")))
    cfg = tiny_config()
    dataset = train_data.make_train_dataset(samples, cfg.train, cfg.model.input_size)
    model = build_model("nano", len(CLASSES))
    loader = train_data.make_loader(dataset, batch_size=4, steps=2, seed=0)
    batches = list(loader)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images.shape == (4, 3, 64, 64) and targets.shape == (4, train_data.MAX_LABELS, 5)
    assert targets[..., 3:].max() <= 64 * 1.0001  # cx, cy, w, h in input pixels
    # The package's TrainTransform gives float32 images of whole 0-255 values: the loader's uint8 is exact.
    image, _, _, _ = dataset[0]
    assert image.dtype == np.float32 and np.array_equal(image, image.astype(np.uint8))

    train_engine.set_no_aug(loader, model, True)
    assert model.head.use_l1
    assert_own_boxes_only(list(loader), samples, indices_of(loader, epoch=0))


def indices_of(loader, epoch: int) -> list[int]:
    sampler = train_data.EpochSampler(loader.batch_sampler.sampler.n, loader.batch_sampler.sampler.num_samples,
                                 loader.batch_sampler.sampler.seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def assert_own_boxes_only(batches: list, samples: list, indices: list[int]) -> None:
    """Without mosaic every image keeps exactly its own boxes (the background image none)."""
    targets = torch.cat([t for _, t in batches])
    boxes_per_image = (targets[:, :, 3] > 0).sum(1).tolist()
    assert boxes_per_image == [len(samples[i].targets) for i in indices]


def run_epochs(loader, model, epochs: range, no_aug_from: int) -> dict[int, list]:
    """The training loop's per-epoch calls, without the model step: batches of each epoch."""
    batches = {}
    for epoch in epochs:
        train_engine.set_no_aug(loader, model, epoch >= no_aug_from)
        loader.batch_sampler.set_epoch(epoch)
        batches[epoch] = list(loader)
    return batches


def test_loader_batches_depend_on_epoch_only_and_mosaic_closes_in_persistent_workers(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data")
    samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")))
    dataset = train_data.make_train_dataset(samples, tiny_config().train, 64)
    model = build_model("nano", len(CLASSES))
    inline = run_epochs(train_data.make_loader(dataset, 4, 2, seed=7), model, range(3), no_aug_from=2)
    workers_loader = train_data.make_loader(dataset, 4, 2, seed=7, num_workers=2)
    in_workers = run_epochs(workers_loader, model, range(3), no_aug_from=2)
    # Resume at epoch 1: a fresh loader (new processes, new RNG state) that never ran epoch 0.
    resumed = run_epochs(train_data.make_loader(dataset, 4, 2, seed=7, num_workers=2), model, range(1, 3), no_aug_from=2)
    assert workers_loader._iterator is not None  # the same worker processes served all three epochs
    for epoch in range(3):
        for ours, theirs in zip(inline[epoch], in_workers[epoch]):
            assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    for epoch in (1, 2):
        for ours, theirs in zip(inline[epoch], resumed[epoch]):
            assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.equal(inline[0][0][0], inline[1][0][0])  # epochs differ
    # Epoch 2 is a no-aug epoch: mosaic off in the persistent workers, which only see it through the keys.
    assert_own_boxes_only(in_workers[2], samples, indices_of(workers_loader, epoch=2))
    mosaic_boxes = (torch.cat([t for _, t in in_workers[0]])[:, :, 3] > 0).sum(1).tolist()
    assert mosaic_boxes != [len(samples[i].targets) for i in indices_of(workers_loader, epoch=0)]


def test_resized_images_are_cached_once_and_load_as_decoded(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data")
    samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "c")))
    decoding = train_data.LabelledImages(samples, 64)
    cached = train_data.LabelledImages(samples, 64, resized_dir=str(tmp_path / "resized"))
    for index in range(len(samples)):
        first, again = cached.pull_item(index), cached.pull_item(index)  # decoded + written, then loaded
        assert np.array_equal(first[0], decoding.pull_item(index)[0]) and np.array_equal(again[0], first[0])
        assert first[0].dtype == np.uint8 and np.array_equal(first[1], decoding.pull_item(index)[1])
    assert len(os.listdir(tmp_path / "resized")) == len(samples)


def test_epoch_sampler_gives_every_rank_the_same_number_of_steps():
    for n in (1, 3, 5):
        indices = list(train_data.EpochSampler(n, 8, seed=1))
        assert len(indices) == 8 and all(type(i) is int and 0 <= i < n for i in indices)


def test_optimizer_has_yolox_parameter_groups():
    model = build_model("nano", 2)
    tc = TrainConfig(warmup_epochs=0)
    optimizer = train_engine.make_optimizer(model, tc, global_batch=8)
    no_decay, decay, biases = optimizer.param_groups
    assert optimizer.defaults["nesterov"] and no_decay["weight_decay"] == 0 and decay["weight_decay"] == tc.weight_decay
    bn_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in no_decay["params"]} == bn_weights
    assert biases["weight_decay"] == 0 and all(p.dim() == 1 for p in biases["params"])
    assert no_decay["lr"] == pytest.approx(tc.basic_lr_per_img * 8)
    total = len(no_decay["params"]) + len(decay["params"]) + len(biases["params"])
    assert total == len(list(model.parameters()))


def overfit_one_batch(device: torch.device, steps: int) -> tuple[list[float], int]:
    """`steps` fp16-autocast steps with the GradScaler on one fixed batch (YOLOX-nano, input 96, batch 4,
    one box per image); returns (losses, steps the scaler skipped). The scenario of issue 10, where every
    step of the first 8 was skipped at torch's default initial scale."""
    torch.manual_seed(0)
    net = build_model("nano", len(CLASSES)).to(device).train()
    # lr 0.01 (batch 4): high enough that one batch is visibly fitted in a dozen steps.
    cfg = Config(model=ModelConfig(size="nano", input_size=96),
                 train=TrainConfig(batch_size=4, warmup_epochs=0, basic_lr_per_img=0.0025, ema=False))
    state = train_engine.make_state(net, cfg.train, global_batch=4, steps_per_epoch=steps, device=device)
    state.amp, state.scaler = True, train_engine.make_scaler(device, enabled=True)  # make_state enables AMP on CUDA only
    images = torch.rand(4, 3, 96, 96) * 255
    targets = torch.zeros(4, train_data.MAX_LABELS, 5)
    targets[:, 0] = torch.tensor([0.0, 48.0, 48.0, 30.0, 20.0])  # class, cx, cy, w, h (input pixels)
    losses, skipped = [], 0
    for _ in range(steps):
        scale = state.scaler.get_scale()
        losses.append(float(train_engine.train_step(state, images, targets)))
        skipped += state.scaler.get_scale() < scale  # the scaler halves its scale exactly when it skips a step
    return losses, skipped


def test_fp16_autocast_steps_on_cpu_fit_one_batch_without_skipped_steps():
    # CPU twin of tests/test_gpu.py's AMP test: the same fp16 autocast and GradScaler, on CPU.
    losses, skipped = overfit_one_batch(torch.device("cpu"), steps=12)
    assert all(np.isfinite(losses))
    assert skipped <= 1, f"{skipped} of 12 steps skipped (fp16 gradient overflow)"
    assert min(losses[-3:]) < 0.9 * losses[0], losses


def test_empty_train_split_is_a_clear_error(tmp_path):
    labels, manifest = make_dataset(tmp_path / "data", n_train=0, n_val=2)
    with pytest.raises(ValueError, match="no rows with split == 'train'"):
        train.train_model(tiny_config(), labels, manifest, str(tmp_path / "out"), CLASSES)


# ------------------------------------------------------------------------------ Ray Train


@pytest.mark.slow
@pytest.mark.s3
def test_ray_train_on_s3_checkpoints_at_evaluations_resumes_and_survives_a_worker_failure(ray_session, s3_bucket,
                                                                                          tmp_path):
    """Checkpoints and weights on S3, written at evaluations only; epochs between report progress (Ray
    Train accepts it from every rank). A rerun of the same out_dir, now with two gloo workers, continues
    from the last checkpoint, and a worker that raises mid-epoch is restarted (FailureConfig) from the
    last checkpoint of that attempt. One test: each Ray Train run costs about half a minute of CI."""
    labels, manifest = make_dataset(tmp_path / "data")
    out_dir = f"{s3_bucket}/run/round=00/train"
    first = train.train_model(tiny_config(epochs=2, eval_interval=2, num_workers=1), labels, manifest, out_dir,
                              CLASSES)
    assert [h["epoch"] for h in first.history] == [2] and first.best_epoch == 2 and first.epochs == 2
    assert first.best_map50 is not None and 0.0 <= first.best_map50 <= 1.0
    assert first.weights_uri == f"{out_dir}/model.pt" and storage.exists(first.weights_uri)
    assert storage.exists(f"{out_dir}/ray/train/epoch_0002/state.pt")
    assert not storage.exists(f"{out_dir}/ray/train/epoch_0001/state.pt")
    filesystem, _ = storage.resolve(out_dir)
    metrics = ray.train.Result.from_path(first.run_path, storage_filesystem=filesystem).metrics
    assert (metrics["epoch"], metrics["epochs"], metrics["eta_s"]) == (2, 2, 0) and metrics["images_per_s"] > 0

    marker = str(tmp_path / "failed_once")

    def fail_once_in_epoch_4(epoch: int, rank: int, world_size: int) -> None:
        """Raises in the last rank mid-epoch 4 (index 3), once (the marker file remembers across restarts)."""
        if epoch == 3 and rank == world_size - 1 and not os.path.exists(marker):
            with open(marker, "w") as handle:
                handle.write("failed\n")
            raise RuntimeError("injected failure in epoch 4")

    # Same out_dir, two more epochs evaluated each (the last one without mosaic): the rerun starts at the
    # epoch-2 checkpoint; the failure in epoch 4 sends the restarted group back to the epoch-3 checkpoint.
    second = train.train_model(tiny_config(epochs=4, no_aug_epochs=1, max_failures=1), labels, manifest, out_dir,
                               CLASSES, on_step=fail_once_in_epoch_4)
    assert os.path.exists(marker)  # the last rank did raise in epoch 4
    assert [h["epoch"] for h in second.history] == [2, 3, 4]
    assert [h["attempt_start_epoch"] for h in second.history] == [0, 2, 3]
    assert [h["no_aug"] for h in second.history] == [False, False, True]
    assert second.epochs == 4 and second.best_epoch in (2, 3, 4)
    model = load_model("nano", len(CLASSES), second.weights_uri).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 84, 5 + len(CLASSES))


def test_progress_line_names_epoch_loss_lr_speed_and_eta():
    # 3 of 60 epochs done at 25 s each: 57 x 25 s = 23m45s left
    progress = train_engine.epoch_progress(3, 60, loss=7.41234, lr=0.02, images_per_s=41.26, seconds_per_epoch=25.0)
    assert progress["eta_s"] == 57 * 25.0
    assert train_engine.progress_line(progress) == "[train] epoch 3/60  loss 7.412  lr 2.00e-02  41.3 img/s  ETA 23m45s"
    progress = train_engine.epoch_progress(10, 300, loss=2.0, lr=1e-3, images_per_s=250.0, seconds_per_epoch=60.0)
    assert train_engine.progress_line(progress).endswith("ETA 4h50m")
