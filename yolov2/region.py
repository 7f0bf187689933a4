"""The region layer's forward: activation of the head's logits and the predicted boxes.

Reference: darknet `src/region_layer.c` (`forward_region_layer`, `get_region_box`,
`entry_index`) and YOLOv2 paper section 2 ("Direct location prediction").

Layout (darknet's `entry_index`): the head output (N, A*(5+C), H, W) is viewed as
(N, A, 5+C, H, W); entry 0 = tx, 1 = ty, 2 = tw, 3 = th, 4 = objectness, 5.. = classes.
Column i runs along W (x), row j along H (y). Anchors are (A, 2) `(w, h)` in grid cells.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_entries(x: Tensor, num: int) -> Tensor:
    """(N, A*(5+C), H, W) -> (N, A, 5+C, H, W), a view in darknet's memory order."""
    n, ch, h, w = x.shape
    if ch % num:
        raise ValueError(f"head has {ch} channels, not a multiple of num={num} anchors")
    return x.view(n, num, ch // num, h, w)


def activate(logits: Tensor, num: int) -> Tensor:
    """Darknet's region activation: σ on x, y, objectness; softmax over classes; w, h raw.

    logits: (N, A*(5+C), H, W) -> same shape, darknet's `l.output`.
    """
    z = split_entries(logits, num)  # (N, A, 5+C, H, W)
    out = torch.cat((torch.sigmoid(z[:, :, 0:2]), z[:, :, 2:4], torch.sigmoid(z[:, :, 4:5]),
                     torch.softmax(z[:, :, 5:], dim=2)), dim=2)
    return out.view_as(logits)


def grid(h: int, w: int, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Column and row index of every cell: two (H, W) tensors (i along x, j along y)."""
    j, i = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                          torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return i, j


def pred_boxes(output: Tensor, anchors: Tensor) -> Tensor:
    """Predicted boxes of every slot, from the *activated* output.

    output: (N, A*(5+C), H, W) as returned by :func:`activate`; anchors: (A, 2) in grid cells.
    Returns (N, A, H, W, 4) normalised centre-size `(x, y, w, h)`:
    x = (i + σ(tx))/W, y = (j + σ(ty))/H, w = exp(tw)·aw/W, h = exp(th)·ah/H.
    """
    a = anchors.shape[0]
    y = split_entries(output, a)  # (N, A, 5+C, H, W)
    _, _, _, h, w = y.shape
    i, j = grid(h, w, output.device, output.dtype)
    aw = anchors[:, 0].to(output).view(1, a, 1, 1)
    ah = anchors[:, 1].to(output).view(1, a, 1, 1)
    bx = (i + y[:, :, 0]) / w
    by = (j + y[:, :, 1]) / h
    bw = torch.exp(y[:, :, 2]) * aw / w
    bh = torch.exp(y[:, :, 3]) * ah / h
    return torch.stack((bx, by, bw, bh), dim=-1)
