"""Darknet's region-layer loss: the implicit loss whose gradient is darknet's delta.

Reference: darknet `src/region_layer.c` (`forward_region_layer`, `backward_region_layer_gpu`),
and ../shared/golden/README.md ("Sign of delta and the implicit loss"). Darknet never writes a
loss down: it writes a delta (minus the gradient). The loss here is the one whose gradient is
that delta, with every target and scale a constant (the rules are in `yolov2.loss.assign`):

    L = Σ_slots ½·s_coord·Σ_{x,y,w,h} (t − p)²        p = σ(z_x), σ(z_y), z_w, z_h
      + Σ_slots ½·s_obj·(t_obj − σ(z_obj))²
      + Σ_positives class_scale·(−log softmax(z_cls)[class])

so `loss.backward()` leaves `logits.grad == -delta_logit` (darknet's delta after the logistic
gradient of `backward_region_layer_gpu`). L is summed over the batch; darknet's update divides
by batch·subdivisions, and so must the optimiser's learning rate.

Each term computes its value and its gradient together, in closed form, from darknet's activated
outputs (`Assignment.output`), in darknet's float operations: the gradient is darknet's delta
written out (bit for bit on most entries of the golden cases), and `backward` only scales it by
the incoming gradient. tests/test_loss_rules.py checks it against autograd through L as written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov2.darknet.region import RegionConfig, activate, split_entries
from yolov2.darknet.ulp import U32, sum_ulps
from yolov2.loss.assign import Assignment, RegionParams, Workspace, assign, prior_pull, used_truths

STAT_KEYS = ("avg_iou", "class", "obj", "no_obj", "avg_recall", "count")
# The loss split by rule (:func:`rule_parts`): coordinates of positives, objectness of positives,
# no-object (the objectness of the other slots), the prior pull (seen < 12800), classes.
PART_KEYS = ("loss_coord", "loss_obj", "loss_noobj", "loss_prior", "loss_class")


class RegionStats(Mapping):
    """Darknet's printed diagnostics of one batch, computed when first read.

    Keys: avg_iou, class, obj, no_obj, avg_recall (float; NaN where darknet prints -nan, i.e.
    count == 0) and count (int). `tensors` holds them as 0-d device tensors, computed on first
    access (a training loop that never looks pays nothing); reading a value calls `.item()`, so
    on CUDA the host waits for the device only when (and if) someone looks, never in the loss.
    """

    def __init__(self, compute: Callable[[], dict[str, Tensor]],
                 parts: Callable[[], dict[str, Tensor]] | None = None):
        self._compute: Callable[[], dict[str, Tensor]] | None = compute
        self._tensors: dict[str, Tensor] = {}
        self._parts_compute, self._parts = parts, None

    @property
    def tensors(self) -> dict[str, Tensor]:
        if self._compute is not None:
            self._tensors, self._compute = self._compute(), None
        return self._tensors

    @property
    def parts(self) -> dict[str, Tensor]:
        """The loss split by rule, {PART_KEYS: 0-d device tensors} (:func:`rule_parts`), computed on
        first access; their sum is the loss within :func:`split_bound`."""
        if self._parts is None:
            if self._parts_compute is None:
                raise KeyError("these stats were made without the loss's split by rule")
            self._parts, self._parts_compute = self._parts_compute(), None
        return self._parts

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
    `yolov2.loss.assign.used_truths`) with 0 < x < 1, 0 <= y < 1, 0 < w, h <= 1 and an integer class
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
    rules = {  # each a (N, T) mask of the rows that keep a rule; NaN breaks every rule
        f"x outside (0, 1) (x == 0 ends the list; x >= 1 puts the cell {outside.format('x*W')})":
            lambda: (x > 0) & (x < 1),
        f"y outside [0, 1) (y >= 1 puts the cell {outside.format('y*H')})": lambda: (y >= 0) & (y < 1),
        "w outside (0, 1]": lambda: (w > 0) & (w <= 1),
        "h outside (0, 1]": lambda: (h > 0) & (h <= 1),
        f"class not an integer in [0, {num_classes})":
            lambda: (c >= 0) & (c < num_classes) & (c == c.floor()),
    }
    keep = torch.stack([rule() for rule in rules.values()]).all(0) | ~valid  # (N, T)
    # NaN and Inf propagate through a sum: one read of the logits, and one synchronisation for both
    truths_ok, finite = torch.stack((keep.all(), torch.isfinite(logits.sum()))).tolist()
    if not finite and not torch.isfinite(logits).all():  # (a finite sum can overflow: look again)
        where = tuple(torch.nonzero(~torch.isfinite(logits))[0].tolist())
        raise ValueError(f"logits contain NaN or Inf (first at index {where})")
    if not truths_ok:  # the first row that breaks a rule, and the first rule it breaks
        b, r = torch.nonzero(~keep)[0].tolist()
        msg = next(msg for msg, rule in rules.items() if not rule()[b, r])
        raise ValueError(f"truth[{b}, {r}] = {t[b, r].tolist()}: {msg}")


def coord_term(a: Assignment, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """½·Σ s·(t − p)² over x, y, w, h of every slot, p = (σ(z_x), σ(z_y), z_w, z_h), and its gradient.

    p is `a.output[:, :, 0:4]` (darknet's activated output); targets t and scales s from `a`
    (constants). Returns the value (0-d) and ∂/∂(z_x, z_y, z_w, z_h), (N, A, 4, H, W), written
    into `out` if given: −s·(t − σ)·σ(1 − σ) for x, y and −s·(t − z) for w, h. That is minus
    darknet's `delta_region_box` times the logistic gradient.
    """
    d = a.coord_target - a.output[:, :, 0:4]  # (N, A, 4, H, W)
    sd = a.coord_scale.unsqueeze(2) * d  # darknet's delta: s·(t − p)
    value = 0.5 * torch.vdot(sd.flatten(), d.flatten())
    sig = a.output[:, :, 0:2]
    sd[:, :, 0:2].mul_(sig).mul_(1 - sig)  # through the logistic: (delta·y)·(1 − y), as darknet
    return value, torch.neg(sd, out=out)


def obj_term(a: Assignment, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """½·Σ s_obj·(t_obj − σ(z_obj))² over every slot, and its gradient.

    σ(z_obj) is `a.output[:, :, 4]`. Returns the value (0-d) and ∂/∂z_obj = −s·(t − σ)·σ(1 − σ),
    (N, A, H, W), written into `out` if given: minus darknet's objectness delta times the
    logistic gradient.
    """
    sig = a.output[:, :, 4]
    d = a.obj_target - sig
    sd = a.obj_scale * d  # darknet's delta
    value = 0.5 * torch.vdot(sd.flatten(), d.flatten())
    return value, torch.neg(sd.mul_(sig).mul_(1 - sig), out=out)


def class_term(cls: Tensor, a: Assignment) -> tuple[Tensor, Tensor, Tensor]:
    """Σ class_scale·(−log softmax(z_cls)[class]) over positive slots, its gradient and the softmax.

    cls: (N, R, C) the class logits at the slots of the first R truth rows (R <= T: rows past
    R must be unused; slot 0 for unused rows). Each positive slot is owned by exactly one row
    (the last on it), so the sum runs over the owning rows: a softmax over R·C logits, not over
    all (N, A, C, H, W). Returns the value (0-d), ∂/∂cls = class_scale·(softmax − onehot) (minus
    darknet's `delta_region_class`, 0 on rows that own no slot) and the softmax p, both (N, R, C).
    """
    r = cls.shape[1]
    owns = a.valid[:, :r] & ~a.overwritten[:, :r]  # (N, R)
    scale = a.params.class_scale * owns  # the class scale of the slot each owning row took
    c = a.truth[:, :r, 4].long().clamp(min=0).unsqueeze(2)  # (N, R, 1)
    logp = torch.log_softmax(cls, dim=2)  # (N, R, C)
    value = -(scale * logp.gather(2, c).squeeze(2)).sum()
    p = torch.softmax(cls, dim=2)  # closer to darknet's float softmax than logp.exp()
    grad = p.scatter_add(2, c, torch.full_like(c, -1, dtype=p.dtype)) * scale.unsqueeze(2)
    return value, grad, p


def rule_parts(a: Assignment, klass: Tensor) -> dict[str, Tensor]:
    """The loss L split by rule, 0-d tensors keyed by PART_KEYS; klass: :func:`class_term`'s value.

    The same terms as :func:`coord_term` and :func:`obj_term`, ½·s·(t − p)², summed over the positive
    slots (`loss_coord`, `loss_obj`) and over all the others: their objectness toward 0 at
    noobject_scale (`loss_noobj`; ignored slots have scale 0 and add exact zeros) and their
    coordinates toward the prior at scale .01 (`loss_prior`; scale 0, so exactly 0, once
    seen >= 12800). Every term is >= 0, and each part is a sum of some of L's terms, so the parts
    add up to L within rounding (:func:`split_bound`).
    """
    pos = a.truth_index >= 0  # (N, A, H, W)
    d = a.coord_target - a.output[:, :, 0:4]  # (N, A, 4, H, W)
    coord = 0.5 * (a.coord_scale.unsqueeze(2) * d * d).sum(2)  # (N, A, H, W) per slot
    do = a.obj_target - a.output[:, :, 4]
    obj = 0.5 * (a.obj_scale * do * do)
    zero = coord.new_zeros(())
    return {"loss_coord": torch.where(pos, coord, zero).sum(), "loss_obj": torch.where(pos, obj, zero).sum(),
            "loss_noobj": torch.where(pos, zero, obj).sum(),
            "loss_prior": torch.where(pos, zero, coord).sum(), "loss_class": klass.detach().float()}


def loss_terms(logits_shape: Sequence[int], num_anchors: int, truth_rows: int) -> int:
    """How many terms the loss of one forward sums: 4 coordinates and 1 objectness per slot, one class
    term per truth row (at most 30). logits_shape: (N, A*(5+C), H, W)."""
    n, _, h, w = logits_shape
    return n * (num_anchors * h * w * 5 + min(truth_rows, 30))


def split_bound(loss: float, terms: int, digits: int | None = None) -> float:
    """How far the sum of the parts (:func:`rule_parts`) can be from the loss, absolute.

    loss: the loss (>= 0), or any positive multiple of it (per image: a mean); terms: how many terms
    it sums, over all its forwards (:func:`loss_terms`, added up). The loss and the parts' sum are
    two float32 sums of the same non-negative terms in other orders (a part is a sum of some
    terms, the loss adds the terms' sums in another grouping), so they differ by at most
    sum_ulps(terms) ulps of Σ|term| = the loss (yolov2.darknet.ulp: Higham §3.1); one ulp is at most
    2·U32 of the value, and a mean divides both sides alike. digits: the values were printed with
    that many significant digits (log.csv: 6), each then off by up to half a unit of its last
    digit, at most 5·10^-digits of itself: the loss and five parts summing to it add
    2·5·10^-digits of the loss.
    """
    bound = (sum_ulps(terms) + 1) * 2 * U32 * loss
    if digits is not None:
        bound += 2 * 5 * 10.0 ** -digits * loss
    return bound


class _ClosedForm(torch.autograd.Function):
    """L as an autograd node whose backward is its gradient, computed in closed form by the terms.

    One full-size buffer: entries 0-4 of every slot, zeros, and the class rows added in (autograd
    through slices and a gather would allocate one per piece and add them up).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor, grad5: Tensor, grad_cls: Tensor,  # type: ignore[override]
                index: Tensor) -> Tensor:
        ctx.save_for_backward(grad5, grad_cls, index)
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        grad5, grad_cls, index = ctx.saved_tensors
        n, a, _, h, w = grad5.shape
        grad = grad5.new_empty(n, a, ctx.shape[1] // a, h, w)  # (N, A, 5+C, H, W)
        grad[:, :, 5:].zero_()
        torch.mul(grad5, g, out=grad[:, :, 0:5])
        grad.flatten(1).scatter_add_(1, index, (grad_cls * g).flatten(1))  # unowned rows add exact zeros
        return grad.view(ctx.shape).to(ctx.dtype), None, None, None, None


def region_stats(prob: Tensor, a: Assignment, klass: Tensor | None = None) -> RegionStats:
    """Darknet's printed diagnostics from the class softmax at the slots of the first R truth rows
    (N, R, C; rows past R unused) and the assignment (σ(z_obj) is `a.output[:, :, 4]`).

    Every used truth counts, also one that a later truth overwrote: IoU and recall (IoU > .5)
    of its slot's prediction, that slot's objectness and probability of the truth's class.
    No Obj is the mean objectness of every slot of the batch.
    """
    def compute() -> dict[str, Tensor]:
        r = prob.shape[1]
        valid, iou = a.valid[:, :r].to(prob.dtype), a.truth_iou[:, :r]  # (N, R)
        flat = a.output[:, :, 4].flatten(1)  # (N, S) σ(z_obj)
        cat = prob.gather(2, a.truth[:, :r, 4].long().clamp(min=0).unsqueeze(2)).squeeze(2)  # (N, R)
        count = valid.sum()
        sums = {
            "avg_iou": (iou * valid).sum(), "class": (cat * valid).sum(),
            "obj": (flat.gather(1, a.slot[:, :r].clamp(min=0)) * valid).sum(),
            "avg_recall": ((iou > 0.5) * valid).sum(),
        }
        stats = {k: v / count for k, v in sums.items()}
        return {**stats, "no_obj": flat.mean(), "count": count.long()}

    return RegionStats(compute, None if klass is None else lambda: rule_parts(a, klass))


class RegionLoss(nn.Module):
    """Darknet's region-layer loss (YOLOv2), equal to darknet's delta rule by rule.

    anchors: (A, 2) `(w, h)` in grid cells. Called as `loss_fn(logits, truth, seen)`:
    logits (N, A*(5+C), H, W) raw head output (any float dtype; computed in float32 as darknet,
    the gradient returned in the logits' dtype);
    truth (N, T, 5) normalised centre-size rows `(x, y, w, h, class)` on the logits' device,
    a row with x == 0 ends an image's list, at most 30 rows used; seen: images seen including
    this batch (darknet's `*net.seen`), an int or a 0-d tensor on the device. Returns the loss
    summed over the batch; `self.stats` then holds darknet's printed diagnostics of the batch
    (:class:`RegionStats`, e.g. `loss_fn.stats["avg_iou"]`), and `self.stats.parts` the loss split by
    rule (:func:`rule_parts`). `explain(...)` returns the
    :class:`yolov2.loss.assign.Assignment` the loss is computed from.

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
        """The :class:`yolov2.loss.assign.Assignment` (every decision, target and scale) of a batch."""
        if self.validate:
            check_inputs(logits, truth, self.anchors.shape[0], self.num_classes)
        return assign(logits, truth, seen, self.anchors, self.params, self.prior(*logits.shape[2:]),
                      self._workspace)

    def prior(self, h: int, w: int) -> Tensor:
        """`yolov2.loss.assign.prior_pull` for this grid, kept until the grid or the anchors change."""
        key = (h, w, self.anchors.data_ptr(), self.anchors._version, self.anchors.device)
        if self._prior is None or self._prior[0] != key:
            self._prior = (key, prior_pull(self.anchors, h, w))
        return self._prior[1]

    def forward(self, logits: Tensor, truth: Tensor, seen: int | Tensor) -> Tensor:
        """The loss L (module docstring), a 0-d tensor summed over the batch.

        The value and its gradient are computed together (:func:`coord_term`, :func:`obj_term`,
        :func:`class_term`); `backward` hands the gradient on, scaled by the incoming one.
        """
        a = self.explain(logits, truth, seen)
        with torch.no_grad():
            z = split_entries(logits.detach(), self.anchors.shape[0]).float()  # (N, A, 5+C, H, W)
            n, _, k, h, w = z.shape
            # the class logits of the truth rows any image uses (on CUDA all rows: no sync)
            index = a.class_index(k - 5).flatten(1)  # (N, R*C)
            cls = z.flatten(1).gather(1, index).view(n, -1, k - 5)  # (N, R, C)
            grad5 = z.new_empty(n, self.anchors.shape[0], 5, h, w)  # ∂L/∂ entries 0-4
            coord, _ = coord_term(a, out=grad5[:, :, 0:4])
            obj, _ = obj_term(a, out=grad5[:, :, 4])
            klass, g_cls, prob = class_term(cls, a)
        self.stats = region_stats(prob, a, klass)
        return _ClosedForm.apply(logits, coord + obj + klass, grad5, g_cls, index)

    def delta(self, logits: Tensor, truth: Tensor, seen: int | Tensor) -> Tensor:
        """Darknet's region `l.delta` as `forward_region_layer` leaves it, (N, A*(5+C), H, W) float32.

        The activation-space delta, scale·(target − output) entry by entry (classes: at positive
        slots only), before the backward's logistic gradient on x, y and objectness (the gradient
        of the loss is minus that product). Its squared sum is darknet's cost, `*l.cost`, what
        `train_network_datum` returns and darknet's training log averages.
        """
        a = self.explain(logits, truth, seen)
        num = self.anchors.shape[0]
        with torch.no_grad():
            out = split_entries(activate(logits.detach().float(), num), num)  # (N, A, 5+C, H, W)
            d = torch.zeros_like(out)
            d[:, :, 0:4] = a.coord_scale.unsqueeze(2) * (a.coord_target - a.output[:, :, 0:4])
            d[:, :, 4] = a.obj_scale * (a.obj_target - a.output[:, :, 4])
            onehot = F.one_hot(a.class_target.clamp(min=0), self.num_classes).movedim(-1, 2)
            d[:, :, 5:] = a.class_scale.unsqueeze(2) * (onehot - out[:, :, 5:])  # 0 off positives
        return d.view(logits.shape)

    def extra_repr(self) -> str:
        return f"anchors={self.anchors.tolist()}, num_classes={self.num_classes}, {self.params}"
