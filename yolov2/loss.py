"""Darknet's region-layer loss: the implicit loss whose gradient is darknet's delta.

Reference: darknet `src/region_layer.c` (`forward_region_layer`, `backward_region_layer_gpu`),
and ../shared/golden/README.md ("Sign of delta and the implicit loss"). Darknet never writes a
loss down: it writes a delta (minus the gradient). The loss here is the one whose gradient is
that delta, with every target and scale a constant (the rules are in `yolov2.assign`):

    L = Σ_slots ½·s_coord·Σ_{x,y,w,h} (t − p)²        p = σ(z_x), σ(z_y), z_w, z_h
      + Σ_slots ½·s_obj·(t_obj − σ(z_obj))²
      + Σ_positives class_scale·(−log softmax(z_cls)[class])

so `loss.backward()` leaves `logits.grad == -delta_logit` (darknet's delta after the logistic
gradient of `backward_region_layer_gpu`). L is summed over the batch; darknet's update divides
by batch·subdivisions, and so must the optimiser's learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from yolov2.assign import Assignment, RegionParams, Workspace, assign, prior_pull, used_truths
from yolov2.region import RegionConfig, split_entries

STAT_KEYS = ("avg_iou", "class", "obj", "no_obj", "avg_recall", "count")


class RegionStats(Mapping):
    """Darknet's printed diagnostics of one batch, computed when first read.

    Keys: avg_iou, class, obj, no_obj, avg_recall (float; NaN where darknet prints -nan, i.e.
    count == 0) and count (int). `tensors` holds them as 0-d device tensors, computed on first
    access (a training loop that never looks pays nothing); reading a value calls `.item()`, so
    on CUDA the host waits for the device only when (and if) someone looks, never in the loss.
    """

    def __init__(self, compute: Callable[[], dict[str, Tensor]]):
        self._compute: Callable[[], dict[str, Tensor]] | None = compute
        self._tensors: dict[str, Tensor] = {}

    @property
    def tensors(self) -> dict[str, Tensor]:
        if self._compute is not None:
            self._tensors, self._compute = self._compute(), None
        return self._tensors

    def __getitem__(self, key: str) -> float | int:
        value = self.tensors[key].item()
        return int(value) if key == "count" else float(value)

    def __iter__(self) -> Iterator[str]:
        return iter(STAT_KEYS)

    def __len__(self) -> int:
        return len(STAT_KEYS)

    def __str__(self) -> str:
        """The line darknet prints, `%f` with -nan as glibc writes it."""
        v = [self[k] for k in STAT_KEYS[:5]]
        f = ["-nan" if math.isnan(x) else f"{x:f}" for x in v]
        return (f"Region Avg IOU: {f[0]}, Class: {f[1]}, Obj: {f[2]}, No Obj: {f[3]}, "
                f"Avg Recall: {f[4]},  count: {self['count']}")

    def __repr__(self) -> str:
        return f"RegionStats({dict(self)})"


def check_inputs(logits: Tensor, truth: Tensor, num_anchors: int, num_classes: int) -> None:
    """Raise ValueError for inputs that would give silently wrong gradients.

    logits: (N, A*(5+C), H, W) finite; truth: (N, T, 5), the used rows (see
    `yolov2.assign.used_truths`) with 0 < x < 1, 0 <= y < 1, 0 < w, h <= 1 and an integer class
    in [0, C). The checks cost one host-device synchronisation on CUDA.
    """
    want = num_anchors * (5 + num_classes)
    if logits.dim() != 4 or logits.shape[1] != want:
        raise ValueError(f"logits have shape {tuple(logits.shape)}; the region layer needs (N, {want}, H, W) "
                         f"= A*(5+C) channels for A={num_anchors} anchors and C={num_classes} classes")
    if truth.dim() != 3 or truth.shape[2] != 5 or truth.shape[0] != logits.shape[0]:
        raise ValueError(f"truth has shape {tuple(truth.shape)}; need ({logits.shape[0]}, T, 5) "
                         "rows (x, y, w, h, class)")
    t, valid = used_truths(truth.to(logits.device))
    x, y, w, h, c = t.unbind(-1)
    outside = "outside the grid: darknet's cell (int)({}) would index past it"
    problems = {  # each a (N, T) mask of used rows that break a rule; NaN breaks every rule
        f"x outside (0, 1) (x == 0 ends the list; x >= 1 puts the cell {outside.format('x*W')})":
            ~((x > 0) & (x < 1)),
        f"y outside [0, 1) (y >= 1 puts the cell {outside.format('y*H')})": ~((y >= 0) & (y < 1)),
        "w outside (0, 1]": ~((w > 0) & (w <= 1)),
        "h outside (0, 1]": ~((h > 0) & (h <= 1)),
        f"class not an integer in [0, {num_classes})": ~((c >= 0) & (c < num_classes) & (c == c.floor())),
    }
    bad = torch.stack([m & valid for m in problems.values()]).flatten(1).any(1)  # (rules,)
    finite = torch.isfinite(logits.sum())  # NaN and Inf propagate through a sum; one read
    flags = torch.cat((bad, finite.view(1))).tolist()  # the one synchronisation
    if not flags[-1] and not torch.isfinite(logits).all():  # (a finite sum can overflow: look again)
        where = tuple(torch.nonzero(~torch.isfinite(logits))[0].tolist())
        raise ValueError(f"logits contain NaN or Inf (first at index {where})")
    for (msg, mask), hit in zip(problems.items(), flags[:-1], strict=False):
        if hit:
            b, r = torch.nonzero(mask & valid)[0].tolist()
            raise ValueError(f"truth[{b}, {r}] = {t[b, r].tolist()}: {msg}")


class Entries(NamedTuple):
    """The logits the loss reads, split by :func:`pick_entries` (each its own tensor)."""

    xy: Tensor  # (N, A, 2, H, W) tx, ty of every slot
    wh: Tensor  # (N, A, 2, H, W) tw, th
    obj: Tensor  # (N, A, H, W) objectness
    cls: Tensor  # (N, T, C) class logits at each truth row's slot (slot 0 for unused rows)


def coord_loss(e: Entries, a: Assignment) -> Tensor:
    """Σ ½·s·(t − p)² over x, y, w, h of every slot, p = (σ(tx), σ(ty), tw, th)."""
    p = torch.cat((torch.sigmoid(e.xy), e.wh), 2)  # (N, A, 4, H, W)
    return 0.5 * (a.coord_scale.unsqueeze(2) * (a.coord_target - p).square()).sum()


def obj_loss(e: Entries, a: Assignment) -> Tensor:
    """Σ ½·s_obj·(t_obj − σ(z_obj))² over every slot."""
    return 0.5 * (a.obj_scale * (a.obj_target - torch.sigmoid(e.obj)).square()).sum()


def class_loss(e: Entries, a: Assignment) -> Tensor:
    """Σ class_scale·(−log softmax(z_cls)[class]) over positive slots.

    Each positive slot is owned by exactly one truth row (the last on it), so the sum runs over
    the owning rows' class logits e.cls (N, T, C): a softmax over T·C logits, not over all
    (N, A, C, H, W).
    """
    slot = a.slot.clamp(min=0)  # (N, T)
    scale = a.class_scale.flatten(1).gather(1, slot) * (a.valid & ~a.overwritten)  # (N, T)
    logp = torch.log_softmax(e.cls, dim=2)  # (N, T, C)
    picked = logp.gather(2, a.truth[..., 4].long().clamp(min=0).unsqueeze(2)).squeeze(2)  # (N, T)
    return -(scale * picked).sum()


class _PickEntries(torch.autograd.Function):
    """Copies of entries 0-1, 2-3, 4 and gathered class logits, with ONE full-size gradient
    buffer (slices and a gather would each allocate one and add them up: the bulk of a backward)."""

    @staticmethod
    def forward(ctx, z: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ctx.save_for_backward(index)
        ctx.shape = z.shape
        cls = z.flatten(1).gather(1, index)
        return z[:, :, 0:2].clone(), z[:, :, 2:4].clone(), z[:, :, 4].clone(), cls

    @staticmethod
    def backward(ctx, g_xy: Tensor, g_wh: Tensor, g_obj: Tensor, g_cls: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        grad = g_xy.new_zeros(ctx.shape)  # (N, A, 5+C, H, W)
        grad[:, :, 0:2], grad[:, :, 2:4], grad[:, :, 4] = g_xy, g_wh, g_obj
        grad.flatten(1).scatter_add_(1, index, g_cls)  # rows that own no slot carry exact zeros
        return grad, None


def pick_entries(z: Tensor, a: Assignment) -> Entries:
    """Split logits z (N, A, 5+C, H, W) into the :class:`Entries` the loss reads."""
    n, _, k, h, w = z.shape
    classes = torch.arange(5, k, device=z.device)  # entries of the C classes
    slot = a.slot.clamp(min=0)[..., None]  # (N, T, 1) = anchor*H*W + cell
    index = (slot // (h * w) * k + classes) * (h * w) + slot % (h * w)  # (N, T, C) into z.flatten(1)
    xy, wh, obj, cls = _PickEntries.apply(z, index.flatten(1))
    return Entries(xy, wh, obj, cls.view(index.shape))


def region_stats(e: Entries, a: Assignment) -> RegionStats:
    """Darknet's printed diagnostics from the picked logits and the assignment.

    Every used truth counts, also one that a later truth overwrote: IoU and recall (IoU > .5)
    of its slot's prediction, that slot's objectness and probability of the truth's class.
    No Obj is the mean objectness of every slot of the batch.
    """
    obj_logit, cls = e.obj.detach(), e.cls.detach()

    def compute() -> dict[str, Tensor]:
        valid = a.valid.to(cls.dtype)  # (N, T)
        obj = torch.sigmoid(obj_logit).flatten(1)  # (N, S)
        prob = torch.softmax(cls, dim=2)  # (N, T, C)
        cat = prob.gather(2, a.truth[..., 4].long().clamp(min=0).unsqueeze(2)).squeeze(2)  # (N, T)
        count = valid.sum()
        sums = {
            "avg_iou": (a.truth_iou * valid).sum(), "class": (cat * valid).sum(),
            "obj": (obj.gather(1, a.slot.clamp(min=0)) * valid).sum(),
            "avg_recall": ((a.truth_iou > 0.5) * valid).sum(),
        }
        stats = {k: v / count for k, v in sums.items()}
        return {**stats, "no_obj": obj.mean(), "count": count.long()}

    return RegionStats(compute)


class RegionLoss(nn.Module):
    """Darknet's region-layer loss (YOLOv2), equal to darknet's delta rule by rule.

    anchors: (A, 2) `(w, h)` in grid cells. Called as `loss_fn(logits, truth, seen)`:
    logits (N, A*(5+C), H, W) raw head output (float16/bfloat16 are computed in float32);
    truth (N, T, 5) normalised centre-size rows `(x, y, w, h, class)` on the logits' device,
    a row with x == 0 ends an image's list, at most 30 rows used; seen: images seen including
    this batch (darknet's `*net.seen`), an int or a 0-d tensor on the device. Returns the loss
    summed over the batch; `self.stats` then holds darknet's printed diagnostics of the batch
    (:class:`RegionStats`, e.g. `loss_fn.stats["avg_iou"]`). `explain(...)` returns the
    :class:`yolov2.assign.Assignment` the loss is computed from.

    validate=True checks the inputs first (:func:`check_inputs`: one host-device sync on CUDA);
    turn it off in a training loop whose data are already checked. The loss itself never
    synchronises: no `.item()`, no data-dependent shapes, the stats stay on the device.
    """

    def __init__(self, anchors: Sequence[Sequence[float]] | Tensor, num_classes: int,
                 object_scale: float = 5, noobject_scale: float = 1, class_scale: float = 1,
                 coord_scale: float = 1, thresh: float = 0.6, rescore: bool = True,
                 bias_match: bool = True, validate: bool = True):
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.dim() != 2 or anchors.shape[1] != 2 or not (anchors > 0).all():
            raise ValueError(f"anchors must be (A, 2) positive (w, h) in grid cells, got {anchors.tolist()}")
        self.register_buffer("anchors", anchors.clone())
        self.num_classes = int(num_classes)
        self.params = RegionParams(
            object_scale=float(object_scale), noobject_scale=float(noobject_scale),
            class_scale=float(class_scale), coord_scale=float(coord_scale), thresh=float(thresh),
            rescore=bool(rescore), bias_match=bool(bias_match))
        self.validate = validate
        self.stats: RegionStats | None = None
        self._prior: tuple[tuple, Tensor] | None = None  # (key, prior_pull(anchors, H, W))
        self._workspace = Workspace()  # the IoU table's memory, kept between batches

    @classmethod
    def from_region(cls, cfg: RegionConfig, validate: bool = True) -> RegionLoss:
        """From a cfg's `[region]` section (darknet's values, e.g. thresh .6, object_scale 5)."""
        if cfg.coords != 4 or not cfg.softmax:
            raise ValueError(f"[region] coords={cfg.coords} softmax={int(cfg.softmax)}: only coords=4 with "
                             "softmax=1 (YOLOv2's region layer) is implemented")
        return cls(cfg.anchors, cfg.classes, cfg.object_scale, cfg.noobject_scale, cfg.class_scale,
                   cfg.coord_scale, cfg.thresh, cfg.rescore, cfg.bias_match, validate)

    def explain(self, logits: Tensor, truth: Tensor, seen: int | Tensor) -> Assignment:
        """The :class:`yolov2.assign.Assignment` (every decision, target and scale) of a batch."""
        if self.validate:
            check_inputs(logits, truth, self.anchors.shape[0], self.num_classes)
        return assign(logits, truth, seen, self.anchors, self.params, self.prior(*logits.shape[2:]),
                      self._workspace)

    def prior(self, h: int, w: int) -> Tensor:
        """`yolov2.assign.prior_pull` for this grid, kept until the grid or the anchors change."""
        key = (h, w, self.anchors.data_ptr(), self.anchors._version, self.anchors.device)
        if self._prior is None or self._prior[0] != key:
            self._prior = (key, prior_pull(self.anchors, h, w))
        return self._prior[1]

    def forward(self, logits: Tensor, truth: Tensor, seen: int | Tensor) -> Tensor:
        """The loss L (module docstring), a 0-d tensor summed over the batch."""
        a = self.explain(logits, truth, seen)
        z = split_entries(logits if logits.dtype == torch.float64 else logits.float(), self.anchors.shape[0])
        e = pick_entries(z, a)
        self.stats = region_stats(e, a)
        return coord_loss(e, a) + obj_loss(e, a) + class_loss(e, a)

    def extra_repr(self) -> str:
        return f"anchors={self.anchors.tolist()}, num_classes={self.num_classes}, {self.params}"
