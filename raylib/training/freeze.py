"""`train.freeze`: which part of YOLOX keeps its starting weights while the rest fine-tunes.

YOLOX is `YoloxModule(backbone=YOLOPAFPN, head=YOLOXHead)`, and the YOLOPAFPN's own `.backbone` is the
CSPDarknet: `backbone` freezes the CSPDarknet, `backbone_neck` the whole YOLOPAFPN (CSPDarknet + FPN/PAN
neck); the head always trains. A frozen part is frozen in two ways:

  * its parameters have requires_grad False, so they get no gradient, and `engine.make_optimizer` leaves
    them out of YOLOX's parameter groups (no momentum or weight decay moves them); DDP registers only the
    parameters that require a gradient, so it needs no find_unused_parameters for them;
  * its BatchNorm layers normalise with their stored statistics and never update them. `model.train()`
    would switch them back to batch statistics (and running-stat updates), and the training code calls it
    in more than one place (the worker, `detect.detect_images` restoring the mode after validation), so
    the rule is a forward pre-hook on each frozen BatchNorm that puts it in eval mode before every forward:
    it holds whoever calls `.train()`, and it lives here only.

The EMA copy (`ModelEMA`) averages a frozen tensor with itself: it stays equal up to float rounding.
"""
from __future__ import annotations

import logging

import torch

from raylib.config import FREEZE_CHOICES
from raylib.model import unwrap

log = logging.getLogger(__name__)


def frozen_part(model: torch.nn.Module, freeze: str) -> torch.nn.Module | None:
    """The submodule of YOLOX that `freeze` (one of FREEZE_CHOICES) keeps fixed; None for `none`."""
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"train.freeze must be one of {FREEZE_CHOICES}, got '{freeze}'")
    yolox = unwrap(model)
    return {"none": None, "backbone": yolox.backbone.backbone, "backbone_neck": yolox.backbone}[freeze]


def freeze_model(model: torch.nn.Module, freeze: str) -> int:
    """Freeze the part of `model` that `freeze` names (before the optimizer and DDP are built); returns the
    number of frozen parameters (elements)."""
    part = frozen_part(model, freeze)
    if part is None:
        return 0
    for parameter in part.parameters():
        parameter.requires_grad_(False)
    for module in part.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.register_forward_pre_hook(_keep_in_eval_mode)
    frozen = sum(parameter.numel() for parameter in part.parameters())
    total = sum(parameter.numel() for parameter in unwrap(model).parameters())
    log.info("train.freeze=%s: %.2fM of %.2fM parameters frozen (BatchNorm statistics included)",
             freeze, frozen / 1e6, total / 1e6)
    return frozen


def _keep_in_eval_mode(module: torch.nn.Module, _inputs: tuple) -> None:
    # A module-level function, not a lambda: the model is deep-copied (EMA) and may be pickled.
    module.training = False
