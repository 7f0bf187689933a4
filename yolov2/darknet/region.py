"""The region layer's forward: activation of the head's logits and the predicted boxes.

Reference: darknet `src/region_layer.c` (`forward_region_layer`, `get_region_box`,
`entry_index`) and YOLOv2 paper section 2 ("Direct location prediction").

Layout (darknet's `entry_index`): the head output (N, A*(5+C), H, W) is viewed as
(N, A, 5+C, H, W); entry 0 = tx, 1 = ty, 2 = tw, 3 = th, 4 = objectness, 5.. = classes.
Column i runs along W (x), row j along H (y). Anchors are (A, 2) `(w, h)` in grid cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from yolov2.darknet.cfg import CfgError, Section


@dataclass(frozen=True)
class RegionConfig:
    """A cfg's `[region]` section with darknet's defaults (`parse_region` in darknet's parser.c).

    anchors: A `(w, h)` pairs in grid cells (32-pixel cells for YOLOv2).
    """

    anchors: tuple[tuple[float, float], ...]
    classes: int = 20
    num: int = 1
    coords: int = 4
    softmax: bool = False
    jitter: float = 0.2
    rescore: bool = False
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    thresh: float = 0.5
    bias_match: bool = False
    absolute: bool = False
    random: bool = False
    max_boxes: int = 30

    @classmethod
    def from_section(cls, sec: Section) -> RegionConfig:
        """The section's keys with darknet's defaults; values darknet would misuse are CfgErrors."""
        num = sec.get_int("num", 1)
        if not 1 <= num <= 1024:
            raise CfgError(f"{sec.where('num')}: num={num} anchors; expected 1 to 1024")
        flat = sec.get_list("anchors", float, [0.5] * (2 * num))  # darknet's biases default to .5
        if len(flat) != 2 * num:
            raise CfgError(f"{sec.where('anchors')}: {len(flat)} values for num={num} anchors "
                           f"(need {2 * num}: w,h per anchor)")
        if any(v <= 0 for v in flat):  # get_list refused NaN and inf already
            raise CfgError(f"{sec.where('anchors')}: anchor sizes must be positive, got "
                           f"{', '.join(f'{v:g}' for v in flat if v <= 0)}")
        coords = sec.get_int("coords", 4)
        if coords != 4:  # the decode and the loss read the 4-coordinate layout (x, y, w, h)
            raise CfgError(f"{sec.where('coords')}: coords={coords}; YOLOv2's region layer has 4 "
                           f"(x, y, w, h)")
        if sec.get_int("classes", 20) < 1 or sec.get_int("max", 30) < 1:
            key = "classes" if sec.get_int("classes", 20) < 1 else "max"
            raise CfgError(f"{sec.where(key)}: {key}={sec.get_int(key)}; expected at least 1")
        if not 0 <= sec.get_float("jitter", 0.2) < 1:
            raise CfgError(f"{sec.where('jitter')}: jitter={sec.get_float('jitter')}; "
                           f"expected 0 <= jitter < 1")
        if not 0 <= sec.get_float("thresh", 0.5) <= 1:
            raise CfgError(f"{sec.where('thresh')}: thresh={sec.get_float('thresh')}; expected 0 to 1")
        negative = [k for k in ("object_scale", "noobject_scale", "class_scale", "coord_scale")
                    if sec.get_float(k, 1.0) < 0]
        if negative:
            raise CfgError(f"{sec.where(negative[0])}: {negative[0]}={sec.get_float(negative[0])}; "
                           f"scales must be >= 0")
        return cls(
            anchors=tuple((flat[2 * k], flat[2 * k + 1]) for k in range(num)),
            classes=sec.get_int("classes", 20), num=num, coords=coords,
            softmax=bool(sec.get_int("softmax", 0)), jitter=sec.get_float("jitter", 0.2),
            rescore=bool(sec.get_int("rescore", 0)), object_scale=sec.get_float("object_scale", 1.0),
            noobject_scale=sec.get_float("noobject_scale", 1.0),
            class_scale=sec.get_float("class_scale", 1.0), coord_scale=sec.get_float("coord_scale", 1.0),
            thresh=sec.get_float("thresh", 0.5), bias_match=bool(sec.get_int("bias_match", 0)),
            absolute=bool(sec.get_int("absolute", 0)), random=bool(sec.get_int("random", 0)),
            max_boxes=sec.get_int("max", 30),
        )

    @property
    def anchor_tensor(self) -> Tensor:
        """(A, 2) float32 anchors `(w, h)` in grid cells."""
        return torch.tensor(self.anchors, dtype=torch.float32)

    @property
    def channels(self) -> int:
        """Channels the head must produce: A*(coords+1+C)."""
        return self.num * (self.coords + 1 + self.classes)


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


def pred_box_parts(output: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four parts of every slot's predicted box, each (N, A, H, W), normalised centre-size.

    output: (N, A*(5+C), H, W) as returned by :func:`activate` (only entries 0..3 are read, so
    (N, A*4, H, W) works too); anchors: (A, 2) in grid cells.
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
    return bx, by, bw, bh


def pred_boxes(output: Tensor, anchors: Tensor) -> Tensor:
    """Predicted boxes of every slot, from the *activated* output.

    output: (N, A*(5+C), H, W) as returned by :func:`activate`; anchors: (A, 2) in grid cells.
    Returns (N, A, H, W, 4) normalised centre-size `(x, y, w, h)`:
    x = (i + σ(tx))/W, y = (j + σ(ty))/H, w = exp(tw)·aw/W, h = exp(th)·ah/H.
    """
    return torch.stack(pred_box_parts(output, anchors), dim=-1)
