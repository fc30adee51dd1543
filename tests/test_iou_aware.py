"""raylib.iou_aware: objectness targets become the IoU of each assigned prediction with its ground truth."""
import numpy as np
import pytest
import torch

from raylib.iou_aware import IouAwareYOLOXHead, make_iou_aware
from raylib.model import build_model


def _iou_cxcywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes `a` [n, 4] with one box `b` [4], both (cx, cy, w, h): written out here, not yolox's."""
    ax1, ay1, ax2, ay2 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None) * np.clip(
        np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    return inter / (a[:, 2] * a[:, 3] + b[2] * b[3] - inter)


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
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    for step in range(3):
        losses = model(images, labels)
        assert torch.isfinite(losses["total_loss"]), losses
        optimizer.zero_grad()
        losses["total_loss"].backward()
        optimizer.step()
        targets = model.head.last_obj_targets.view(2, -1)
        anchors = targets.shape[1]
        assert targets[0].abs().sum() == 0  # the image without objects: every target 0
        fg = torch.nonzero(targets[1] > 0).squeeze(1)
        assert len(fg) > 0
        expected = _iou_cxcywh(seen["boxes"][1, fg].double().numpy(), np.array(gt))
        np.testing.assert_allclose(targets[1, fg].double().numpy(), expected, rtol=1e-4, atol=1e-5)
        assert (targets[1] < 1).all() and anchors == seen["boxes"].shape[1]
    assert model.head.bcewithlog_loss.__class__.__name__ == "BCEWithLogitsLoss"  # put back after each loss


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


@pytest.mark.slow
def test_option_trains_and_scores_through_the_loop(tmp_path):
    """`jobs/loop.py debug=fast model.iou_aware_obj=true train.init=previous`: two rounds, each with its
    calibration table on val and the report's calibration section (about 1 min of CPU on 2 cores)."""
    import json
    import os
    import subprocess
    import sys

    from raylib.paths import RoundPaths

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run_root = str(tmp_path / "run")
    done = subprocess.run([sys.executable, os.path.join(root, "jobs", "loop.py"), "debug=fast", "loop.rounds=2",
                           f"data.root={tmp_path}/data", f"run_root={run_root}", f"hydra.run.dir={tmp_path}/hydra",
                           "cluster.num_cpus=2", "loop.last_round_takes_all=false", "model.iou_aware_obj=true",
                           "train.init=previous"], cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for r in range(2):
        rp = RoundPaths(run_root, r)
        summary = json.loads(open(rp.calibration_summary).read())
        assert summary["split"] == "val" and summary["n_images"] > 0
        assert os.path.exists(rp.calibration) and os.path.exists(rp.metrics)
    assert os.path.exists(RoundPaths(run_root, 0).detections)  # round 0's model scored the pool
    assert "## Calibration" in open(os.path.join(run_root, "report", "report.md")).read()
