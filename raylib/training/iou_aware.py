"""IoU-aware objectness (`model.iou_aware_obj=true`): train YOLOX's objectness towards the IoU of each
assigned prediction with its ground truth (as YOLOv5 does), instead of towards 1.

YOLOX's `YoloxHead.get_losses` (pixeltable-yolox) sets the objectness target of every anchor SimOTA assigns to 1, so its
objectness is a "something is here" score, not a predicted IoU; the cls_iou strategy reads it as one.
This module changes only that target, by extending the package's head, not copying its loss:

- `get_assignments` (SimOTA, unchanged) is wrapped to record, per image, the foreground mask and the
  IoU of each assigned prediction with its ground truth (`pred_ious_this_matching`, which YOLOX already
  uses for the class target);
- for one call, the head's `bcewithlog_loss` is replaced: its first call inside `get_losses` is the
  objectness term (the package's order: iou, obj, cls); there the foreground targets (1) become those IoUs.

    from raylib.training.iou_aware import make_iou_aware
    make_iou_aware(model)   # a YOLOX model from raylib.model.build_model; in place, returns it

Inference is unchanged; the weights file has the same keys.
"""
from __future__ import annotations

import torch
from torch import nn
from yolox.models.yolo_head import YoloxHead


class IouAwareYOLOXHead(YoloxHead):
    """YoloxHead whose objectness target is the assigned prediction's IoU with its ground truth."""

    def get_assignments(self, batch_idx, *args, **kwargs):
        result = super().get_assignments(batch_idx, *args, **kwargs)
        _classes, fg_mask, pred_ious, _gt_inds, _num_fg = result
        if getattr(self, "_assigned", None) is not None:
            self._assigned.append((batch_idx, fg_mask.detach(), pred_ious.detach()))
        return result

    def get_losses(self, imgs, x_shifts, y_shifts, expanded_strides, labels, outputs, origin_preds, dtype):
        batch, anchors = outputs.shape[:2]
        bce = self.bcewithlog_loss
        head = self

        class ObjectnessWithIouTargets(nn.Module):
            """Stands in for the head's BCE for one call: the package's objectness term, which comes after
            every image's assignment and before the class term; then the BCE is put back."""

            def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                head.bcewithlog_loss = bce
                if targets.shape != (batch * anchors, 1):
                    raise RuntimeError(f"iou_aware_obj: expected the objectness targets first, shape "
                                       f"{(batch * anchors, 1)}, got {tuple(targets.shape)} (yolox's get_losses changed?)")
                obj = torch.zeros_like(targets)
                for b, fg_mask, ious in head._assigned:
                    index = torch.nonzero(fg_mask, as_tuple=False).squeeze(1).to(obj.device) + b * anchors
                    obj[index, 0] = ious.to(obj.device, obj.dtype).clamp(0.0, 1.0)
                return bce(logits, obj)

        self._assigned = []
        self.bcewithlog_loss = ObjectnessWithIouTargets()
        try:
            return super().get_losses(imgs, x_shifts, y_shifts, expanded_strides, labels, outputs, origin_preds, dtype)
        finally:
            self.bcewithlog_loss = bce
            self._assigned = None


def make_iou_aware(model: nn.Module) -> nn.Module:
    """Turn `model.head` (a YoloxHead) into an IouAwareYOLOXHead in place; returns `model`."""
    head = model.head
    if isinstance(head, IouAwareYOLOXHead):
        return model
    if not isinstance(head, YoloxHead):
        raise TypeError(f"iou_aware_obj needs a yolox YoloxHead, got {type(head).__name__}")
    head.__class__ = IouAwareYOLOXHead
    return model
