"""Darknet's region-layer target assignment, one rule per function, composed in darknet's order.

Reference: darknet `src/region_layer.c` (`forward_region_layer`, `get_region_box`,
`delta_region_box`, `delta_region_class`) and `src/box.c` (`box_iou`). The loss in
`yolov2.loss.region_loss` is computed from the :class:`Assignment` returned here, and so are the book's
figures: there is one implementation.

Conventions. A *slot* is (image b, anchor n, row j, column i); slot tensors are (N, A, H, W).
Truth rows are darknet's `(x, y, w, h, class)`, normalised centre-size in [0, 1]; truth
tensors are (N, T, 5) with T <= 30. Per-slot coordinate targets are in darknet's *t-space*:
`tx, ty` are the cell fractions σ(z_x), σ(z_y) should reach, `tw, th` the raw z_w, z_h
(`w = exp(tw)·aw/W`). Float32 throughout, as darknet's arrays, except where a comment says
darknet rounds a double.

Darknet's order, which the composition in :func:`assign` follows (a later rule overwrites):
1. every slot: :func:`negatives` (ignore rule) and, while seen < 12800, :func:`prior_pull`;
2. every truth: :func:`match_truths` (cell, best anchor), :func:`rescore`,
   :func:`coordinate_targets`, class; two truths on one slot: :func:`later_truth_wins`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from yolov2.darknet.boxes import box_iou_outer
from yolov2.darknet.region import grid, split_entries

NEGATIVE, IGNORED, POSITIVE = 0, 1, 2  # Assignment.state values
MAX_TRUTHS = 30  # forward_region_layer hard-codes 30 (cfg `max` is parsed, not used)
PRIOR_SEEN = 12800  # the prior pull runs while *net.seen < 12800
PRIOR_SCALE = 0.01


@dataclass(frozen=True)
class RegionParams:
    """The `[region]` numbers the assignment reads (darknet's names; defaults of yolov2-voc.cfg)."""

    object_scale: float = 5.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    thresh: float = 0.6
    rescore: bool = True
    bias_match: bool = True


@dataclass
class Assignment:
    """What the region layer decided for one batch: every decision, target and scale.

    Per slot, (N, A, H, W) unless noted (slot = image b, anchor n, row j, column i):

    - state: int8 NEGATIVE (0) / IGNORED (1: best_iou > thresh, objectness left alone) /
      POSITIVE (2: a truth's cell and best anchor). `.positive`, `.ignored`: bool masks.
    - truth_index: int64 row t (in `truth`) of the truth that owns a positive slot, else -1.
    - best_iou: float, best IoU of the slot's prediction with any truth of its image.
    - ignore: bool, best_iou > thresh (the ignore rule fired; a positive overrides it).
    - iou: IoU of a positive slot's prediction with its truth (the rescore target), else 0.
    - coord_target: (N, A, 4, H, W) `(tx, ty, tw, th)` in t-space (module docstring): the
      truth's at positives, the prior pull's (≈ .5, .5, 0, 0) while seen < 12800, else 0.
    - coord_scale: coord_scale·(2 − w·h) at positives, .01 while seen < 12800, else 0.
    - obj_target: IoU (rescore) or 1 at positives, else 0; obj_scale: object_scale at
      positives, 0 where ignored, noobject_scale elsewhere.
    - class_target: int64 class of the owning truth, -1 elsewhere; class_scale: class_scale at
      positives, 0 elsewhere.
    - output: (N, A, 5, H, W) darknet's `l.output` of entries 0-4, `(σ(z_x), σ(z_y), z_w, z_h,
      σ(z_obj))` in float32, σ rounded from double: what the deltas are computed from.
    - pred: (N, A, H, W, 4) the predicted boxes the IoUs use, normalised centre-size (a view of
      (N, 4, A, H, W) memory).

    state, iou, class_target and class_scale (and the masks positive, ignored) are properties,
    computed from truth_index when read: the loss does not need them as slot tensors.

    Per truth row, (N, T) with T = min(rows given, 30):

    - truth: (N, T, 5) the float32 rows `(x, y, w, h, class)` as used; valid: bool, rows before
      the first x == 0.
    - cell_i (column, along W), cell_j (row, along H), best_anchor, slot (`(n*H + j)*W + i`,
      the index into a (A, H, W) slot tensor of its image flattened): int64, -1 if not valid.
    - overwritten: bool, a later truth took the same slot (this row still counts in the stats).
    - truth_iou: IoU of its slot's prediction with it (darknet's Avg IOU term), 0 if not valid.

    rows: how many leading truth rows the IoU table and the class term read (:func:`used_rows`).
    prior_active: seen < 12800 (a bool, or a 0-d bool tensor when seen was a tensor).
    params: the `[region]` numbers the rules used.
    """

    truth_index: Tensor
    best_iou: Tensor
    ignore: Tensor
    coord_target: Tensor
    coord_scale: Tensor
    obj_target: Tensor
    obj_scale: Tensor
    output: Tensor
    pred: Tensor
    truth: Tensor
    valid: Tensor
    cell_i: Tensor
    cell_j: Tensor
    best_anchor: Tensor
    slot: Tensor
    overwritten: Tensor
    truth_iou: Tensor
    rows: int
    prior_active: bool | Tensor
    params: RegionParams

    @property
    def positive(self) -> Tensor:
        """(N, A, H, W) bool, the slots a truth owns."""
        return self.truth_index >= 0

    @property
    def ignored(self) -> Tensor:
        """(N, A, H, W) bool, slots without objectness gradient (best IoU > thresh, no truth)."""
        return self.ignore & (self.truth_index < 0)

    @property
    def state(self) -> Tensor:
        """(N, A, H, W) int8: NEGATIVE, IGNORED or POSITIVE (a positive overrides the ignore rule)."""
        state = self.ignore.to(torch.int8)  # IGNORED == 1, NEGATIVE == 0
        return state.masked_fill_(self.positive, POSITIVE)

    def _owner(self, per_truth: Tensor, empty: float) -> Tensor:
        """A per-truth (N, T) value read at each slot's owner: (N, A, H, W), `empty` where no owner."""
        n, t = per_truth.shape
        owner = self.truth_index.flatten(1)  # (N, S)
        if t == 0:
            return torch.full_like(self.truth_index, empty, dtype=per_truth.dtype)
        got = per_truth.gather(1, owner.clamp(min=0))
        return torch.where(owner >= 0, got, empty).view(self.truth_index.shape).to(per_truth.dtype)

    @property
    def iou(self) -> Tensor:
        """(N, A, H, W) IoU of a positive slot's prediction with its truth (the rescore target), else 0."""
        return self._owner(self.truth_iou, 0.0)

    @property
    def class_target(self) -> Tensor:
        """(N, A, H, W) int64 class of the owning truth, -1 elsewhere."""
        return self._owner(self.truth[..., 4].long(), -1)

    @property
    def class_scale(self) -> Tensor:
        """(N, A, H, W) class_scale at positives, 0 elsewhere."""
        return torch.where(self.positive, self.params.class_scale, 0.0)

    def class_index(self, num_classes: int) -> Tensor:
        """(N, R, C) positions in z.flatten(1) (z: (N, A, 5+C, H, W)) of the class logits at the
        slots of the first R = `rows` truth rows; slot 0 for rows that are not valid."""
        h, w = self.truth_index.shape[2:]
        k = 5 + num_classes
        slot = self.slot[:, :self.rows].clamp(min=0)[..., None]  # (N, R, 1) = anchor*H*W + cell
        classes = torch.arange(5, k, device=slot.device)
        return (slot // (h * w) * k + classes) * (h * w) + slot % (h * w)


def used_truths(truth: Tensor) -> tuple[Tensor, Tensor]:
    """Darknet's truth list: the first 30 rows, ending at the first row with x == 0.

    truth: (N, T, 5) normalised centre-size rows `(x, y, w, h, class)`.
    Returns the float32 rows (N, min(T, 30), 5) and valid (N, min(T, 30)) bool.
    """
    t = truth[:, :MAX_TRUTHS].float()  # darknet's net.truth is float
    return t, torch.cumprod(t[..., 0] != 0, dim=1).bool()


def used_rows(valid: Tensor) -> int:
    """How many leading truth rows any image uses, on CPU; on other devices all of them.

    valid: (N, T). The IoU table is (N, rows, A*H*W); trimming rows every image leaves empty
    shrinks it (a batch of 1-5 truths padded to 30 rows: 6x). Reading the count is free on CPU
    but would be a host-device synchronisation on CUDA, so there the table keeps all T rows.
    """
    if valid.device.type != "cpu" or valid.shape[1] == 0:
        return valid.shape[1]
    return int(valid.sum(1).max())


def decode_boxes(z: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Darknet's activated entries 0-4 and the predicted boxes, from logits z (N, A, 5+C, H, W).

    Returns output (N, A, 5, H, W) `(σ(z_x), σ(z_y), z_w, z_h, σ(z_obj))`, darknet's `l.output`
    of those entries (σ evaluated in double and rounded to float), and the boxes (N, A, H, W, 4)
    (a view), normalised centre-size, with darknet's roundings (golden README, "Predicted
    box"): x = (i + σ)/W and y = (j + σ)/H in float; w = exp(z)·aw/W and h evaluated in double
    and rounded once. No gradient.
    """
    n, a, _, h, w = z.shape
    t = z[:, :, 0:5].to(torch.float64, copy=True)  # (N, A, 5, H, W), a copy: the rest goes on in place
    t[:, :, 0:2].sigmoid_()
    t[:, :, 4].sigmoid_()
    output = t.float()  # σ rounded to float; z_w, z_h come back bit for bit
    t[:, :, 2:4].exp_().mul_(anchors.double().view(1, a, 2, 1, 1))
    t[:, :, 2].div_(w)
    t[:, :, 3].div_(h)
    # part-major memory (N, 4, A, H, W): each part of every slot is contiguous for the IoU table
    box = output.new_empty(n, 4, a, h, w)
    box[:, 2:4].copy_(t[:, :, 2:4].transpose(1, 2))  # the one rounding of w, h
    i, j = grid(h, w, z.device)
    torch.add(output[:, :, 0], i, out=box[:, 0]).div_(w)
    torch.add(output[:, :, 1], j, out=box[:, 1]).div_(h)
    return output, box.permute(0, 2, 3, 4, 1)


def ignore_rule(best_iou: Tensor, thresh: float) -> Tensor:
    """Slots whose best IoU with any truth is > thresh, strictly, in float32 as darknet
    (`thresh = .6` is 0.600000024f). best_iou: any shape; returns bool of that shape."""
    return best_iou > torch.full((), thresh, dtype=torch.float32, device=best_iou.device)


def negatives(best_iou: Tensor, noobject_scale: float, thresh: float) -> tuple[Tensor, Tensor]:
    """The objectness rule for every slot: target 0 with noobject_scale, scale 0 where ignored.

    best_iou: (N, A, H, W) or (N, S). Returns (scale, ignore) of that shape; the target is 0.
    """
    ignore = ignore_rule(best_iou, thresh)
    return torch.where(ignore, 0.0, noobject_scale).to(best_iou), ignore


def prior_pull(anchors: Tensor, h: int, w: int) -> Tensor:
    """The seen < 12800 targets of every slot: cell centre and anchor size, in t-space.

    anchors: (A, 2) grid cells. Returns (A, 4, H, W) `(tx, ty, tw, th)`, ≈ (.5, .5, 0, 0),
    computed through darknet's float formulas (`truth.x = (i + .5)/W` in double, then
    `tx = truth.x*W - i` in float); the scale is PRIOR_SCALE on every slot, ignored ones included.
    """
    a = anchors.shape[0]
    j, i = torch.meshgrid(torch.arange(h, device=anchors.device, dtype=torch.float64),
                          torch.arange(w, device=anchors.device, dtype=torch.float64), indexing="ij")
    tx = ((i + 0.5) / w).float() * w - i.float()  # (H, W)
    ty = ((j + 0.5) / h).float() * h - j.float()
    aw, ah = anchors[:, 0].float(), anchors[:, 1].float()
    tw = torch.log(aw / w * w / aw).view(a, 1, 1).expand(a, h, w)  # (A, H, W), exactly 0 for stock cfgs
    th = torch.log(ah / h * h / ah).view(a, 1, 1).expand(a, h, w)
    return torch.stack((tx.expand(a, h, w), ty.expand(a, h, w), tw, th), 1)  # (A, 4, H, W)


class Workspace:
    """Scratch tensors kept between calls. A fresh 14 MB table (N=64, 19x19, 30 truths) costs
    thousands of page faults per batch on CPU, more than computing it; a kept one costs none.
    A tensor from :meth:`get` is valid until the next `get` of the same name."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of `shape` with like's dtype and device, reusing memory."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = like.new_empty(size)
        return buf[:size].view(shape)


def slot_truth_iou(pred: Tensor, truth: Tensor, valid: Tensor, workspace: Workspace | None = None) -> Tensor:
    """IoU of every truth of an image with every slot's prediction: (N, T, A*H*W), 0 if not valid.

    pred: (N, A, H, W, 4), truth: (N, T, 5), both normalised centre-size. With a workspace the
    table lives in it (valid until the workspace is used again).
    """
    # unused rows become a unit box far outside the image: IoU exactly 0, no masking pass
    far = torch.where(valid.unsqueeze(-1), truth[..., :4], torch.zeros_like(truth[..., :4]) - 10)
    far[..., 2:] = torch.where(valid.unsqueeze(-1), far[..., 2:], 1.0)
    p = pred.flatten(1, 3)  # (N, S, 4), S = A*H*W
    scratch = None if workspace is None else workspace.get("iou", (3, *truth.shape[:2], p.shape[1]), p)
    return box_iou_outer(far, p, scratch)  # (N, T, S)


def centred_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """Darknet's `box_iou` of two boxes centred on (0, 0): wh1, wh2 (..., 2) `(w, h)` -> (...).

    With both centres at 0 darknet's overlap `min(w1/2, w2/2) - max(-w1/2, -w2/2)` is exactly
    min(w1, w2) in float (halving and negation are exact), so this equals `box_iou` bit for bit.
    """
    inter = torch.minimum(wh1[..., 0], wh2[..., 0]) * torch.minimum(wh1[..., 1], wh2[..., 1])
    return inter / (wh1[..., 0] * wh1[..., 1] + wh2[..., 0] * wh2[..., 1] - inter)


def match_truths(truth: Tensor, valid: Tensor, anchors: Tensor, h: int, w: int,
                 pred: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Each truth's cell and best anchor: (cell_i, cell_j, best_anchor), each (N, T) int64.

    truth: (N, T, 5) normalised centre-size; anchors (A, 2) grid cells. `i = (int)(x*W)`, the
    product rounded to float32 then truncated (x = .7f on a 10-grid gives 7, not 6). The best
    anchor has the largest IoU of the centred shapes `(0, 0, aw/W, ah/H)` and `(0, 0, w, h)`;
    darknet's strict `>` means the first anchor wins a tie, as `argmax` does. With bias_match
    off, pass `pred` (N, A, H, W, 4): the shapes are the predictions of the truth's cell.
    Rows that are not valid get -1.
    """
    wh = torch.full((2,), w, dtype=torch.float32, device=truth.device)  # (W, H), filled on the device
    wh[1] = h
    cell = (truth[..., 0:2] * wh).long()  # (N, T, 2), float32 product, truncation
    if pred is None:
        shape = anchors.float() / wh  # (A, 2)
    else:
        flat = (cell[..., 1] * w + cell[..., 0]).clamp(0, h * w - 1)  # (N, T)
        cells = pred.flatten(2, 3)  # (N, A, H*W, 4)
        index = flat[:, None, :, None].expand(-1, cells.shape[1], -1, 4)
        shape = cells.gather(2, index)[..., 2:4].transpose(1, 2)  # (N, T, A, 2)
    best = centred_iou(truth[..., 2:4].unsqueeze(-2), shape).argmax(-1)  # (N, T), the first maximum wins
    none = torch.full_like(best, -1)
    return (torch.where(valid, cell[..., 0], none), torch.where(valid, cell[..., 1], none),
            torch.where(valid, best, none))


def later_truth_wins(slot: Tensor, valid: Tensor, num_slots: int) -> Tensor:
    """The truth row that owns each slot: (N, S) int64, -1 where no truth maps there.

    slot: (N, T) per-image slot index `(n*H + j)*W + i`; several truths on one slot → the later
    row wins, as darknet's loop overwrites. A max-scatter of the row number gives exactly that,
    deterministically on every device.
    """
    rows = torch.arange(slot.shape[1], device=slot.device).expand_as(slot)
    owner = torch.full((slot.shape[0], num_slots), -1, dtype=torch.long, device=slot.device)
    src = torch.where(valid, rows, -1)
    return owner.scatter_reduce_(1, torch.where(valid, slot, 0), src, reduce="amax")


def rescore(truth_iou: Tensor, rescore: bool) -> Tensor:
    """Objectness target of a positive: the IoU of its current prediction (rescore=1), else 1.

    truth_iou: (N, T). The IoU is a constant of the loss: no gradient flows through it.
    """
    return truth_iou if rescore else torch.ones_like(truth_iou)


def coordinate_targets(truth: Tensor, cell_i: Tensor, cell_j: Tensor, best_anchor: Tensor,
                       anchors: Tensor, h: int, w: int, coord_scale: float) -> tuple[Tensor, Tensor]:
    """Each truth's (tx, ty, tw, th) in t-space, (N, T, 4), and its scale coord_scale·(2 − w·h), (N, T).

    truth: (N, T, 5) normalised centre-size; anchors (A, 2) grid cells. tx = x·W − i,
    ty = y·H − j, tw = log(w·W/aw), th = log(h·H/ah), all in float32 as darknet.
    """
    x, y, bw, bh = truth[..., 0], truth[..., 1], truth[..., 2], truth[..., 3]
    anc = anchors.float()[best_anchor.clamp(min=0)]  # (N, T, 2)
    tx = x * float(w) - cell_i.float()
    ty = y * float(h) - cell_j.float()
    tw = torch.log(bw * float(w) / anc[..., 0])
    th = torch.log(bh * float(h) / anc[..., 1])
    return torch.stack((tx, ty, tw, th), -1), coord_scale * (2 - bw * bh)


def to_slots(base: Tensor, index: Tensor, values: Tensor, winner: Tensor) -> Tensor:
    """A copy of base with each winning truth row's values written at its flat index.

    base: any shape (an expanded view is fine); index: (..., N, T, ...) flat positions into
    base; values: index's shape; winner: (N, T) bool broadcast to index, the rows that write
    (valid and not overwritten, so no two writes meet and the result is the same on every
    device). A scatter of at most T rows per image, instead of a read of every slot.
    """
    out = base.new_empty(base.numel() + 1)  # one spare element takes the rows that do not write
    out[:-1].view(base.shape).copy_(base)
    out.index_put_((torch.where(winner, index, base.numel()).flatten(),), values.flatten().to(out.dtype))
    return out[:-1].view(base.shape)


def assign(logits: Tensor, truth: Tensor, seen: int | Tensor, anchors: Tensor,
           params: RegionParams = RegionParams(), prior: Tensor | None = None,
           workspace: Workspace | None = None) -> Assignment:
    """Every decision and target of darknet's region layer for one batch, in darknet's order.

    logits: (N, A*(5+C), H, W) raw head output; truth: (N, T, 5) normalised centre-size rows
    (darknet's layout, see :func:`used_truths`); seen: images seen including this batch (int,
    or a 0-d tensor on the device); anchors: (A, 2) grid cells; prior: `prior_pull(anchors, H, W)`
    if the caller keeps it, else computed here; workspace: scratch memory a caller keeps between
    batches (RegionLoss keeps both). Inputs are assumed valid
    (`yolov2.loss.region_loss.check_inputs`). No gradient, and no host-device synchronisation when truth,
    anchors and a tensor `seen` already live on the logits' device.
    """
    anchors = torch.as_tensor(anchors, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        z = split_entries(logits.detach(), anchors.shape[0])  # (N, A, 5+C, H, W)
        n, a, _, h, w = z.shape
        output, pred = decode_boxes(z, anchors)  # (N, A, 5, H, W), (N, A, H, W, 4)
        truth, valid = used_truths(truth.to(logits.device))
        k = used_rows(valid)
        iou = slot_truth_iou(pred, truth[:, :k], valid[:, :k], workspace)  # (N, k, S), S = A*H*W
        best = iou.amax(1) if k else iou.new_zeros(n, a * h * w)  # (N, S)
        # 1. every slot: negatives and the ignore rule, then the prior pull (seen counts this batch)
        obj_s, ignore = negatives(best, params.noobject_scale, params.thresh)  # (N, S)
        active = seen.to(z.device) < PRIOR_SEEN if isinstance(seen, Tensor) else bool(seen < PRIOR_SEEN)
        prior = prior_pull(anchors, h, w) if prior is None else prior  # (A, 4, H, W)
        # 2. every truth: cell, best anchor, then its targets overwrite the slot (later truth wins)
        cell_i, cell_j, best_n = match_truths(truth, valid, anchors, h, w,
                                              None if params.bias_match else pred)
        slot = (best_n * h + cell_j) * w + cell_i  # (N, T) per-image slot index
        # only reachable with validation off: an index past the grid makes the scatter fail loudly
        outside = (cell_i < 0) | (cell_j < 0) | (cell_i >= w) | (cell_j >= h)
        slot = torch.where(valid, torch.where(outside, a * h * w, slot), 0)
        owner = later_truth_wins(slot, valid, a * h * w)  # (N, S)
        rows = torch.arange(truth.shape[1], device=z.device)
        overwritten = valid & (owner.gather(1, slot) != rows)
        truth_iou = torch.zeros_like(truth[..., 0])  # (N, T); rows past k are unused
        truth_iou[:, :k] = torch.where(valid[:, :k], iou.gather(2, slot[:, :k, None]).squeeze(2), 0.0)
        t_coord, t_scale = coordinate_targets(truth, cell_i, cell_j, best_n, anchors, h, w,
                                              params.coord_scale)
        # write each winning truth into its slot, over the slot rules' values (later truth wins)
        win, at = valid & ~overwritten, slot + a * h * w * torch.arange(n, device=z.device)[:, None]  # (N, T)
        entry = torch.arange(4, device=z.device) * (h * w)  # (4,) offsets of tx, ty, tw, th
        at4 = (at // (h * w) * 4 * h * w + at % (h * w))[..., None] + entry  # (N, T, 4) into (N, A, 4, H, W)
        coord_t = to_slots((prior * active).expand(n, a, 4, h, w), at4, t_coord,
                           win.unsqueeze(-1))  # (N, A, 4, H, W)
        # two (N, S) float fields in one scatter: coord scale, objectness target
        zero = torch.zeros((), device=z.device)
        base = torch.stack((zero + PRIOR_SCALE * active, zero)).view(2, 1, 1).expand(2, n, a * h * w)
        values = torch.stack((t_scale, rescore(truth_iou, params.rescore)))  # (2, N, T)
        at2 = at + n * a * h * w * torch.arange(2, device=z.device).view(2, 1, 1)  # (2, N, T)
        coord_s, obj_t = to_slots(base, at2, values, win).unbind(0)  # 2 x (N, S)
        obj_s = torch.where(owner >= 0, params.object_scale, obj_s)

        def slots(x: Tensor) -> Tensor:  # (N, S) -> (N, A, H, W)
            return x.view(n, a, h, w)

        return Assignment(
            truth_index=slots(owner), best_iou=slots(best), ignore=slots(ignore), coord_target=coord_t,
            coord_scale=slots(coord_s), obj_target=slots(obj_t), obj_scale=slots(obj_s), output=output,
            pred=pred, truth=truth, valid=valid, cell_i=cell_i, cell_j=cell_j, best_anchor=best_n,
            slot=torch.where(valid, slot, -1), overwritten=overwritten, truth_iou=truth_iou, rows=k,
            prior_active=active, params=params,
        )
