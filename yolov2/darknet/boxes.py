"""Box conventions and darknet's IoU.

Reference: darknet `src/box.c` (`overlap`, `box_intersection`, `box_union`, `box_iou`).
Boxes here are **centre-size** `(x, y, w, h)` in any one unit (normalised, grid cells or pixels)
unless a name says `xyxy` (corners). VOC's +1 pixel convention lives in `yolov2.detect.evaluate`, not here.
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


def box_iou_outer(a: Tensor, b: Tensor, scratch: Tensor | None = None) -> Tensor:
    """Pairwise darknet IoU like :func:`box_iou_matrix`, bit-identical, built for large tables.

    a: (..., P, 4), b: (..., Q, 4) centre-size; returns (..., P, Q). Edges are computed once per
    box and the table is built in three buffers updated in place (memory traffic and fresh pages,
    not arithmetic, are what a large table costs). scratch: optional (3, ..., P, Q) tensor to
    build in (the result is then `scratch[0]`), so a caller can keep it between calls. Clamping
    the overlaps at 0 equals darknet's "0 if w < 0 or h < 0".
    """
    def edges(box: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # left, right, top, bottom
        x, y, w, h = box.unbind(-1)  # one part at a time: fast whatever the memory order of the 4
        half_w, half_h = w / 2, h / 2
        return x - half_w, x + half_w, y - half_h, y + half_h

    # (..., 1, Q) goes first: CPU kernels vectorise a broadcast second operand several times faster
    def rows(x: Tensor) -> Tensor:  # (..., P) -> (..., P, 1)
        return x.unsqueeze(-1)

    def cols(x: Tensor) -> Tensor:  # (..., Q) -> (..., 1, Q)
        return x.unsqueeze(-2)

    al, ar, at, ab = edges(a)
    bl, br, bt, bb = edges(b)
    if scratch is None:
        shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-2])
        scratch = a.new_empty((3, *shape))
    inter, tmp, tmp2 = scratch.unbind(0)
    torch.minimum(cols(br), rows(ar), out=inter)  # x-overlap = min(right) - max(left)
    inter.sub_(torch.maximum(cols(bl), rows(al), out=tmp)).clamp_(min=0)
    torch.minimum(cols(bb), rows(ab), out=tmp)  # y-overlap
    tmp.sub_(torch.maximum(cols(bt), rows(at), out=tmp2)).clamp_(min=0)
    inter.mul_(tmp)
    union = torch.add(cols(b[..., 2] * b[..., 3]), rows(a[..., 2] * a[..., 3]), out=tmp)
    return inter.div_(union.sub_(inter))  # inter / (area_a + area_b - inter)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre-size -> (..., 4) corners `(x1, y1, x2, y2)`, same unit."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) centre-size, same unit."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)
