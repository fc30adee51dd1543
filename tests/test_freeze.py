"""train.freeze: frozen parts of YOLOX keep their weights and BatchNorm statistics through real training
steps (with `.train()` calls between them, as validation makes), the rest trains, and a frozen model still
fits a small set. Without Ray (seconds), then once through Ray Train with two DDP workers (slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raylib.config import Config, ConfigError, ModelConfig, TrainConfig
from raylib.model import build_model, load_model, save_weights
from raylib.training import data as train_data, engine as train_engine, train
from raylib.training.freeze import freeze_model
from tests.helpers import CLASSES, make_dataset, tiny_config

INPUT = 64
FROZEN_PREFIX = {"backbone": "backbone.backbone.", "backbone_neck": "backbone."}  # state-dict names (YOLOX's)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def fixed_batches(tmp_path, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 4 real training items (YOLOX's augmentations, our loader) from 6 tiny generated images."""
    labels, manifest = make_dataset(tmp_path / "data", n_train=6, n_val=0, size=INPUT)
    samples, _ = train_data.load_split(labels, manifest, "train", 0, 1, train_data.ImageCache(str(tmp_path / "cache")))
    cfg = Config(model=ModelConfig(size="nano", input_size=INPUT), train=TrainConfig(mosaic_prob=0.0, mixup_prob=0.0))
    loader = train_data.make_loader(train_data.make_train_dataset(samples, cfg.train, INPUT), 4, n_batches, seed=0)
    return list(loader)


def make_state(model: torch.nn.Module, steps: int, lr_per_img: float = 0.0025) -> train_engine.TrainState:
    cfg = Config(model=ModelConfig(size="nano", input_size=INPUT),
                 train=TrainConfig(batch_size=4, warmup_epochs=0, basic_lr_per_img=lr_per_img))
    return train_engine.make_state(model, cfg.train, global_batch=4, steps_per_epoch=steps,
                                   device=torch.device("cpu"))


def assert_trained(after: dict, before: dict, names: list[str]) -> None:
    """Every tensor of `names` changed (BatchNorm statistics by the batches), but for biases and BN scales of
    the head's stride-32 level, which no box of these 64-px images is assigned to: zero gradient there, and
    no weight decay on them."""
    unchanged = [name for name in names if torch.equal(after[name], before[name])]
    assert len(unchanged) <= 0.1 * len(names), unchanged
    assert all(name.startswith("head.") and ".2." in name and name.endswith(("bias", "bn.weight"))
               for name in unchanged), unchanged


def test_freeze_is_validated_with_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"train\.freeze must be one of \('none', 'backbone', 'backbone_neck'\), got 'neck'"):
        TrainConfig(freeze="neck")


@pytest.mark.parametrize("freeze", ["backbone", "backbone_neck"])
def test_frozen_weights_and_batchnorm_statistics_stay_and_the_rest_trains(tmp_path, freeze):
    torch.manual_seed(0)
    model = build_model("nano", len(CLASSES)).train()
    before = snapshot(model)
    freeze_model(model, freeze)
    batches = fixed_batches(tmp_path, 4)
    state = make_state(model, len(batches))
    in_optimizer = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    for images, targets in batches:
        model.train()  # what the worker and detect_images' mode restore do: it must not unfreeze BatchNorm
        train_engine.train_step(state, images, targets)

    after = model.state_dict()
    frozen = [name for name in after if name.startswith(FROZEN_PREFIX[freeze])]
    trained = [name for name in after if not name.startswith(FROZEN_PREFIX[freeze])]
    assert any(name.endswith("running_mean") for name in frozen) and any(name.endswith("num_batches_tracked") for name in frozen)
    assert [name for name in frozen if not torch.equal(after[name], before[name])] == []
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert_trained(after, before, trained)
    assert all(after[name] == before[name] + len(batches) for name in trained if name.endswith("num_batches_tracked"))


def test_none_freezes_nothing():
    model = build_model("nano", len(CLASSES))
    assert freeze_model(model, "none") == 0
    assert all(p.requires_grad for p in model.parameters())
    optimizer = train_engine.make_optimizer(model, TrainConfig(), global_batch=8)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("freeze", ["backbone", "backbone_neck"])
def test_loss_falls_on_a_small_overfit_set_with_frozen_parts(tmp_path, freeze):
    torch.manual_seed(0)
    model = build_model("nano", len(CLASSES)).train()
    freeze_model(model, freeze)
    batches = fixed_batches(tmp_path, 3)  # 12 items from 6 images, each batch seen 13-14 times in 40 steps
    state = make_state(model, 40, lr_per_img=0.005)
    losses = [float(train_engine.train_step(state, *batches[step % len(batches)])) for step in range(40)]
    assert np.isfinite(losses).all()
    # Mean over one pass of the 3 batches, first vs last (a batch's loss differs from the next one's by ~1).
    # Measured: 11.3 -> 8.1 (backbone), 11.1 -> 7.4 (backbone_neck).
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.85 * first, losses


@pytest.mark.slow
def test_ray_train_with_two_ddp_workers_keeps_the_frozen_part(ray_session, tmp_path):
    """Fine-tuning from weights with the whole YOLOPAFPN frozen, 2 gloo workers: the saved model has the
    start's backbone and neck exactly (EMA off: the saved weights are the trained ones) and a trained head."""
    labels, manifest = make_dataset(tmp_path / "data")
    torch.manual_seed(1)
    start = build_model("nano", len(CLASSES))
    start_uri = str(tmp_path / "start.pt")
    save_weights(start, start_uri, "nano", CLASSES)
    result = train.train_model(tiny_config(epochs=2, num_workers=2, freeze="backbone_neck", ema=False), labels,
                               manifest, str(tmp_path / "out"), CLASSES, init_weights=start_uri)
    trained = load_model("nano", len(CLASSES), result.weights_uri).state_dict()
    started = start.state_dict()
    neck = [name for name in started if name.startswith("backbone.")]
    assert [name for name in neck if not torch.equal(trained[name], started[name])] == []
    assert_trained(trained, started, [name for name in started if name.startswith("head.")])
