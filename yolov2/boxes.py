"""Box conventions and darknet's IoU.

Reference: darknet `src/box.c` (`overlap`, `box_intersection`, `box_union`, `box_iou`).
Boxes here are **centre-size** `(x, y, w, h)` in any one unit (normalised, grid cells or pixels)
unless a name says `xyxy` (corners). VOC's +1 pixel convention lives in `yolov2.evaluate`, not here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _overlap(x1: Tensor, w1: Tensor, x2: Tensor, w2: Tensor) -> Tensor:
    # darknet: min(right) - max(left), may be negative
    return torch.minimum(x1 + w1 / 2, x2 + w2 / 2) - torch.maximum(x1 - w1 / 2, x2 - w2 / 2)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Darknet's `box_iou` of centre-size boxes, broadcast over leading dims.

    a, b: (..., 4) `(x, y, w, h)`; returns (...). The intersection is 0 when the overlap
    width or height is negative; union = a.w*a.h + b.w*b.h - inter.
    """
    w = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    h = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    inter = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union


def box_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: a (..., P, 4), b (..., Q, 4) centre-size -> (..., P, Q)."""
    return box_iou(a.unsqueeze(-2), b.unsqueeze(-3))


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre-size -> (..., 4) corners `(x1, y1, x2, y2)`, same unit."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) centre-size, same unit."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)
