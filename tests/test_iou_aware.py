"""raylib.training.iou_aware: objectness targets become the IoU of each assigned prediction with its ground truth."""
import numpy as np
import pytest
import torch

from raylib.training.iou_aware import IouAwareYOLOXHead, make_iou_aware
from raylib.model import build_model


def _iou_cxcywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes `a` [n, 4] with one box `b` [4], both (cx, cy, w, h): written out here, not yolox's."""
    ax1, ay1, ax2, ay2 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None) * np.clip(
        np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    return inter / (a[:, 2] * a[:, 3] + b[2] * b[3] - inter)


class RecordingLoss(torch.nn.Module):
    """The head's BCE, keeping the targets of every call: what the IoU-aware head passes to it."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss, self.targets = loss, []

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.targets.append(targets.detach())
        return self.loss(logits, targets)


def test_objectness_targets_are_the_assigned_ious_and_training_steps_are_finite():
    torch.manual_seed(0)
    model = make_iou_aware(build_model("nano", 2))
    assert isinstance(model.head, IouAwareYOLOXHead)
    model.train()
    images = torch.rand(2, 3, 64, 64) * 255
    gt = [30.0, 28.0, 24.0, 20.0]  # cx, cy, w, h in input pixels, class 1, in the SECOND image only
    labels = torch.zeros(2, 5, 5)
    labels[1, 0] = torch.tensor([1.0, *gt])

    seen = {}
    original = model.head.get_losses

    def spy(*args, **kwargs):
        seen["boxes"] = args[5][:, :, :4].detach().clone()  # `outputs`: the decoded predictions SimOTA sees
        return original(*args, **kwargs)

    model.head.get_losses = spy
    bce = model.head.bcewithlog_loss = RecordingLoss(model.head.bcewithlog_loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    for step in range(3):
        bce.targets.clear()
        losses = model(images, labels)
        assert torch.isfinite(losses["total_loss"]), losses
        optimizer.zero_grad()
        losses["total_loss"].backward()
        optimizer.step()
        targets = bce.targets[0].view(2, -1)  # the loss's first BCE is objectness (yolox: iou, obj, cls)
        anchors = targets.shape[1]
        assert targets[0].abs().sum() == 0  # the image without objects: every target 0
        fg = torch.nonzero(targets[1] > 0).squeeze(1)
        assert len(fg) > 0
        expected = _iou_cxcywh(seen["boxes"][1, fg].double().numpy(), np.array(gt))
        np.testing.assert_allclose(targets[1, fg].double().numpy(), expected, rtol=1e-4, atol=1e-5)
        assert (targets[1] < 1).all() and anchors == seen["boxes"].shape[1]
    assert model.head.bcewithlog_loss is bce  # put back after each loss


def test_default_head_targets_one_and_iou_aware_changes_only_objectness():
    torch.manual_seed(0)
    plain = build_model("nano", 2).train()
    aware = make_iou_aware(build_model("nano", 2)).train()
    aware.load_state_dict(plain.state_dict())
    assert set(aware.state_dict()) == set(plain.state_dict())  # same weights file
    images = torch.rand(1, 3, 64, 64) * 255
    labels = torch.zeros(1, 5, 5)
    labels[0, 0] = torch.tensor([0.0, 32.0, 32.0, 30.0, 30.0])
    a, b = plain(images, labels), aware(images, labels)
    for key in ("iou_loss", "cls_loss"):
        assert float(a[key].detach()) == pytest.approx(float(b[key].detach()), rel=1e-5)
    assert float(a["conf_loss"].detach()) != pytest.approx(float(b["conf_loss"].detach()), rel=1e-3)  # targets IoU < 1, not 1


# Through the whole loop (two rounds, train.init=previous, calibration per round): the reference job of
# tests/test_loop_e2e.py, and the SIGKILLed run that must end like it.
