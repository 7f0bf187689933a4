"""How far apart two float32 computations are: units in the last place, bounds that hold on any
IEEE 754 hardware, and where a measurement was made.

Two correct float32 programs that compute the same formula in a different order, with another libm
(`exp`, `log`: glibc, SLEEF, CUDA) or with fused multiply-adds, agree only to a few roundings; which
entries come out bit for bit depends on the machine. So every exactness claim of this project is a
bound with an argument: the number k of roundings (and libm ulps) that can separate our value from
darknet's, each worth at most one ulp of M, the magnitude of the largest quantity it involves:

    |ours − ref| <= k · ulp(max(|ref|, M))

`M` (the `floor`) matters where the last operation cancels: for `1 − p` with p close to 1 the error
is an ulp of 1, not of the small result. For a sum of n terms (a convolution) the same rule gives
k ≈ n with M = Σ|term| (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1: each of the
n − 1 additions errs by at most half an ulp of a partial sum, and |partial sum| <= Σ|term|).

Then the counts themselves, each next to its argument: darknet's layers fed the same input
(`layer_bound`), whole networks (`NET_RANGE_BOUND`, a tolerance: no useful worst case exists, and
`Nudged` to check discrete results against it), boxes and their overlaps (`BOX_ULPS`,
`iou_error_bound`), darknet's region-layer delta and printed diagnostics (`REGION_DELTA_ULPS`,
`region_stat_variation`). `bit_exact` and `cpu_name` are for measurements: a fraction of identical
entries is reported with the machine it was measured on, never asserted.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | float | Iterable[float]

U32 = 2.0**-24  # float32's unit roundoff: a correctly rounded operation errs by at most U32·|result|


def _array(x: ArrayLike) -> np.ndarray:
    """x as a float64 numpy array (exact for float32, bf16 and fp16 inputs)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def ulp(x: ArrayLike) -> np.ndarray:
    """The float32 ulp at |x|: the gap from |x| (rounded to float32) to the next float32 away from 0.

    2^(e−23) for |x| in [2^e, 2^(e+1)), 2^-149 (the least subnormal) at 0; float64 array of x's
    shape. ulp(1) = 2^-23 = 2·U32; for any normal x, U32·|x| < ulp(x) <= 2·U32·|x|.
    """
    return np.spacing(np.abs(_array(x)).astype(np.float32)).astype(np.float64)


def ulp_errors(ours: ArrayLike, ref: ArrayLike, floor: ArrayLike = 0.0) -> np.ndarray:
    """|ours − ref| in ulps of max(|ref|, floor), elementwise (float64, the broadcast shape).

    floor: a scalar or an array broadcastable to ref (the magnitude M of the largest quantity the
    computation involves). Entries equal bit for bit (NaN with NaN included) are 0; a NaN against
    a number is inf.
    """
    a, b = np.broadcast_arrays(_array(ours), _array(ref))
    scale = ulp(np.maximum(np.abs(b), _array(floor)))
    with np.errstate(invalid="ignore"):
        err = np.abs(a - b) / scale
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))


def ulp_error(ours: ArrayLike, ref: ArrayLike, floor: ArrayLike = 0.0) -> float:
    """The largest |ours − ref| in ulps of max(|ref|, floor) (see :func:`ulp_errors`); 0 when empty."""
    err = ulp_errors(ours, ref, floor)
    return float(err.max()) if err.size else 0.0


def assert_ulps(ours: ArrayLike, ref: ArrayLike, k: ArrayLike, floor: ArrayLike = 0.0,
                what: str = "values") -> float:
    """Assert |ours − ref| <= k ulps of max(|ref|, floor) everywhere; return the largest error (ulps).

    k and floor: scalars or arrays broadcastable to ref (a bound per entry). The AssertionError
    names `what`, by how much the bound is passed and the worst entry (the largest error over k).
    """
    a, b = np.broadcast_arrays(_array(ours), _array(ref))
    err = ulp_errors(a, b, floor)
    kk = np.broadcast_to(_array(k), err.shape)
    worst = float(err.max()) if err.size else 0.0
    over = err > kk
    if over.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(over, err / np.maximum(kk, 1e-300), 0.0)
        at = np.unravel_index(int(np.argmax(ratio)), err.shape)
        k, worst = float(kk[at]), float(err[at])
        m = np.broadcast_to(_array(floor), b.shape)[at]
        unit = ulp(max(abs(b[at]), m))
        raise AssertionError(
            f"{what}: {worst:.3g} ulps > {k:g} ({int(over.sum())} of {err.size} entries over) "
            f"at index {tuple(int(i) for i in at)}: ours {a[at]:.9g}, reference {b[at]:.9g}, "
            f"|diff| {abs(a[at] - b[at]):.3g}, ulp of max(|ref|, floor={m:.3g}) {unit:.3g}")
    return worst


def sum_ulps(n: int) -> int:
    """k for two float32 sums (or dot products) of the same n terms in any two orders: n + 1.

    In ulps of M = Σ|term| (Higham §3.1): per side, n − 1 additions each err by at most half an
    ulp of a partial sum (|partial| <= M) and the n products together by at most U32·M <= one ulp of M.
    """
    return n + 1


def mean_variation(value: float, n: int, term_ulps: float = 0.0) -> float:
    """How far two float32 means of the same n >= 0 terms can be apart (any order), absolute.

    value: the mean (>= 0); term_ulps: how many ulps (of each term) the terms themselves may
    differ by. sum_ulps(n) + term_ulps ulps of the sum n·value, divided by n, and the division's
    own rounding on each side (<= 1 ulp of the mean).
    """
    return float((sum_ulps(n) + term_ulps) * ulp(value * n) / max(n, 1) + ulp(value))


def range_error(ours: ArrayLike, ref: ArrayLike) -> float:
    """max |ours − ref| / max |ref| (the golden README's measure for network layers); 0 when ref is 0."""
    a, b = _array(ours), _array(ref)
    top = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if b.size else 0.0
    return diff / top if top else (0.0 if diff == 0 else math.inf)


def assert_range(ours: ArrayLike, ref: ArrayLike, bound: float, what: str = "values") -> float:
    """Assert max |ours − ref| <= bound · max |ref|; return the measured ratio."""
    a, b = _array(ours), _array(ref)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {a.shape} != {b.shape}")
    err = range_error(a, b)
    if not err <= bound:
        at = np.unravel_index(int(np.argmax(np.abs(a - b))), b.shape)
        raise AssertionError(f"{what}: max|diff| is {err:.3g} of max|ref| > {bound:g}, worst at "
                             f"{tuple(int(i) for i in at)}: ours {a[at]:.9g}, reference {b[at]:.9g}")
    return err


def bit_exact(ours: ArrayLike, ref: ArrayLike) -> float:
    """The fraction of entries equal bit for bit: a measurement of one machine, never a claim."""
    a, b = np.broadcast_arrays(_array(ours), _array(ref))
    return float(((a == b) | (np.isnan(a) & np.isnan(b))).mean()) if a.size else 1.0


def print_margin(values: ArrayLike, decimals: int) -> float:
    """How far the values are from changing their `f"{v:.{decimals}f}"` text: the least distance
    of any value to a rounding boundary (a half unit of the last printed digit); inf when empty."""
    v = _array(values).ravel() * 10.0**decimals
    return float((np.abs(np.abs(v - np.floor(v)) - 0.5) * 10.0**-decimals).min()) if v.size else math.inf


def assert_prints_stably(values: ArrayLike, decimals: int, err: float, what: str = "values") -> float:
    """Assert that no change of the values by up to `err` changes their text at `decimals`
    decimals (so a printed figure is the same on every machine whose error is within err);
    return the margin."""
    margin = print_margin(values, decimals)
    if not margin > err:
        raise AssertionError(f"{what}: a value lies {margin:.2g} from a rounding boundary of its "
                             f"{decimals}-decimal text, within the error bound {err:.2g}: the printed "
                             "digits could differ on another machine")
    return margin


def cpu_name() -> str:
    """The machine a measurement ran on, e.g. "AMD EPYC (family 26 model 2), torch CPU kernels AVX512".

    /proc/cpuinfo's model name with its family and model numbers (a virtual machine's model name
    can be as short as "AMD EPYC"; family 26 is Zen 5) where there is one, else
    platform.processor(); then the instruction set torch's CPU kernels dispatch to, which decides
    their summation order and libm.
    """
    name, ids = platform.processor() or platform.machine() or "unknown CPU", []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if ":" in line)
    except OSError:
        info = {}
    info = {k.strip().lower(): v.strip() for k, v in info.items()}
    name = info.get("model name") or info.get("hardware") or name
    ids = [f"{k.split()[-1]} {info[k]}" for k in ("cpu family", "model") if k in info]
    where = f"{name} ({' '.join(ids)})" if ids else name
    return f"{where}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"



# ------------------------------------------------------------------------------------ darknet's layers
# One layer fed the same input, against darknet's: in ulps of M, the magnitude of its terms.
# [convolutional]: a dot product of n = (C/groups)·size² terms, z = Σ w·x (M_z = |W| ⊛ |x|: sum_ulps(n)
# for any summation order or blocking, FMAs included; not for Winograd or FFT convolutions), then
# - batch norm: darknet's ((z − μ)/sqrt(v + ε))·γ + β (6 roundings) against z·α + (β − μ·α) with
#   α = γ/sqrt(v + ε) (7), M = (M_z + |μ|)·|α| + |β|; scaling the sum's error by |α| costs a factor
#   2 in ulps: 2·sum_ulps(n) + 6 + 7 + 2 (leaky's ·.1, a side) + 1 = 2·sum_ulps(n) + 16;
# - no batch norm: z + b, M = M_z + |b|: sum_ulps(n) + 2 + 2;
# - logistic activation: 7 more ulps of max(M, 1) (the σ of REGION_ACTIVATION_ULPS).
# [maxpool], [route], [reorg]: comparisons and copies, exact (k = 0). [region] at inference: σ on
# x, y, objectness (darknet: a double σ rounded; torch: expf within 2 ulps, then 1 + e and 1/(·):
# 7 ulps of σ), w, h copied (0), a softmax over the classes (SOFTMAX_ULPS).
SIGMOID_ULPS = 7


Bound = torch.Tensor | float


def layer_bound(layer: torch.nn.Module, *xs: torch.Tensor) -> tuple[Bound, Bound]:
    """(k, M) for one darknet layer fed xs: its output agrees with darknet's within k ulps of
    max(|darknet|, M) on any IEEE float32 machine (see the comment above). k and M are floats or
    tensors of the output's shape (float64)."""
    kind = getattr(layer, "kind", None)
    if kind in ("maxpool", "route", "reorg"):
        return 0.0, 0.0
    if kind == "region":
        x = xs[0].double()
        num, classes = layer.config.num, layer.config.classes
        k = torch.full_like(x, float(SOFTMAX_ULPS)).view(x.shape[0], num, 5 + classes, *x.shape[2:])
        k[:, :, 0:2], k[:, :, 2:4], k[:, :, 4] = SIGMOID_ULPS, 0.0, SIGMOID_ULPS
        return k.view_as(x), 0.0
    if kind != "convolutional":
        raise TypeError(f"no error bound for layer {layer!r}")
    conv, x = layer.conv, xs[0].double()
    n = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    m = torch.nn.functional.conv2d(x.abs(), conv.weight.detach().double().abs(), None, conv.stride,
                                   conv.padding, conv.dilation, conv.groups)  # (N, C', H', W') Σ|w·x|
    if layer.bn is not None:
        bn = layer.bn

        def col(t: torch.Tensor) -> torch.Tensor:  # (C',) -> (1, C', 1, 1), |t| in float64
            return t.detach().double().abs().view(1, -1, 1, 1)

        alpha = col(bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt())
        m = (m + col(bn.running_mean)) * alpha + col(bn.bias)
        k = 2 * sum_ulps(n) + 16
    else:
        m = m + conv.bias.detach().double().abs().view(1, -1, 1, 1)  # (no batch norm: a bias)
        k = sum_ulps(n) + 4
    if layer.activation == "logistic":
        return float(k + SIGMOID_ULPS), m.clamp(min=1)
    return float(k), m



# A whole network fed the same image. Here no worst case helps: the layer bounds compose through
# |W| (about sqrt(n) of gain a layer, against a real gain near 1 because the errors of random-signed
# terms cancel), and how they cancel depends on the summation's blocking (vector lanes, tiles),
# which differs between machines. So a chain is held to a tolerance, not a proof: the golden
# README's 2e-5 of each layer's range. Each layer in it is proved (layer_bound); the composition is
# checked exactly (the same layers, in the same order, on the same tensors); and independent
# implementations of the golden nets (darknet's -Ofast and strict builds, OpenCV's DNN, ours under
# AVX-512, AVX2 and SSE4.1 kernels) all agree within 3.7e-6 of the range. Two machines may then
# differ by twice the tolerance, which `Nudged` checks discrete results against.
NET_RANGE_BOUND = 2e-5


class Nudged(torch.nn.Module):
    """`net` with every entry of its output moved by a seeded uniform ±eps·max|output|: another
    machine's float rounding made larger than the bound, to check that a discrete result (a count,
    a detection, a printed score) does not hang on the last bits. Other attributes are the net's,
    so a Nudged fused net stands in for it in a Detector (`detector.net = Nudged(detector.net, ...)`)."""

    def __init__(self, net: torch.nn.Module, eps: float = 2 * NET_RANGE_BOUND, seed: int = 0):
        super().__init__()
        self.net, self.eps, self.seed = net, eps, seed

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.net(*args, **kwargs)
        noise = torch.rand(out.shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        scale = self.eps * float(out.detach().abs().max())
        return out + ((2 * noise - 1) * scale).to(out)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)



# Darknet's boxes from the same activated output (get_region_box, correct_region_boxes, `b.x *= w`):
# x, y: (i + σ)/W (2 roundings; darknet's -Ofast ·(1/W): 3), the letterbox shift and scale in double
# rounded once (earlier errors grow by netw/new_w <= 2 for aspect ratios up to 2:1), ·im_w for
# pixels (1): in ulps of the image scale (1, or im_w in pixels), 2.5 + 3.5 + 1 = 7. w, h: ours
# expf (2 ulps) ·aw /W ·(netw/new_w) ·im_w, darknet exp·aw/W in double rounded once, then the same 2:
# in ulps of w, 4 + 3.5 = 7.5. So 8 for all four.
BOX_ULPS = 8


def iou_error_bound(boxes: torch.Tensor, err: torch.Tensor | float) -> torch.Tensor:
    """How far darknet's IoU of every pair of boxes can move when each coordinate may be off by
    err: (n, 4) centre-size boxes and (n, 4) (or scalar) absolute bounds -> (n, n), first order
    plus the cross terms (the edges x ± w/2 move by e_x + e_w/2, an overlap by twice that, the
    intersection, the areas and the union by what those give; IoU = I/U by (ΔI + IoU·ΔU)/(U − ΔU))."""
    b = boxes.double()
    e = torch.as_tensor(err, dtype=torch.float64).expand_as(b)
    x, y, w, h = b.unbind(-1)
    ex, ey, ew, eh = e.unbind(-1)

    def overlap(c, s, ec, es):  # (n, n) overlap along one axis and its error bound
        lo = torch.maximum((c - s / 2)[:, None], (c - s / 2)[None])
        hi = torch.minimum((c + s / 2)[:, None], (c + s / 2)[None])
        edge = ec + es / 2
        return (hi - lo).clamp(min=0), edge[:, None] + edge[None]

    ow, dow = overlap(x, w, ex, ew)
    oh, doh = overlap(y, h, ey, eh)
    inter = ow * oh
    d_inter = dow * oh + doh * ow + dow * doh
    area, d_area = w * h, ew * h + eh * w + ew * eh
    union = area[:, None] + area[None] - inter
    d_union = d_area[:, None] + d_area[None] + d_inter
    return (d_inter + inter / union * d_union) / (union - d_union).clamp(min=1e-300)


# ------------------------------------------------------------------------------- darknet's region delta
# k for darknet's delta_logit (src/region_layer.c, forward_region_layer and backward_region_layer_gpu's
# logistic gradient) against a float32 program that computes the same formulas, in ulps of M (see
# region_delta_magnitude). What can separate the two is counted on both sides, each rounding worth
# at most U32·M < 1 ulp of M:
# - x, y, objectness: s·(t − σ)·σ·(1 − σ), in darknet's -Ofast order ((δ·σ)·(1 − σ)), from the
#   same σ: both round a double σ to float, which can differ by one ulp only where the double lies
#   within a double ulp of a float tie (another libm's exp decides). That ulp moves the delta by at
#   most 1.25·s·U32 (|∂/∂σ| <= s·(¼ + 1)), and then the 5 roundings after it differ on each side:
#   2 + 2·5 = 12.
# - w, h: s·(t − z), t = log(w·W/aw). The log's argument may differ by 3 roundings (darknet's -Ofast
#   turns /aw into ·(1/aw); the prior pull's target log((aw/W)·W/aw) is 0 in double and up to 2
#   roundings off 0 in darknet's float): 3 ulps of 1 in t. The log: darknet's double log rounded
#   (½ ulp), a float32 logf (<= 1 ulp: glibc, SLEEF, CUDA). Then t − z and s·d, 2 roundings a side,
#   of values up to 2M: 3 + 3 + 2·2·2 = 14.
# - classes: onehot − p, p = e_c / Σe (C = 20 exps, 19 additions in any order, one division; CPU
#   torch multiplies by 1/Σ: 2 roundings). In U32·p: exp 1 (darknet: double exp, rounded) and 4
#   (a float expf within 2 ulps: 1 for SLEEF, 2 for CUDA), the sums 19 + 19 (positive terms: at
#   most (C − 1)·U32·Σ each), normalisation 1 + 2: |Δp| <= 46·U32·p (SOFTMAX_ULPS). Then onehot − p
#   and ·class_scale, 2 roundings a side: 50, with M = max(p, onehot) (the true class's 1 − p).
SOFTMAX_ULPS = 46  # a 20-class softmax, relative to p (the classes' count without the last 4)
REGION_DELTA_ULPS = {"x, y": 12, "w, h": 14, "objectness": 12, "classes": 50}
REGION_DELTA_ENTRIES = {"x, y": slice(0, 2), "w, h": slice(2, 4), "objectness": slice(4, 5),
                        "classes": slice(5, None)}


class RegionRules(Protocol):
    """What region_delta_magnitude reads: yolov2.loss.assign.Assignment's per-slot fields."""

    coord_scale: torch.Tensor  # (N, A, H, W)
    coord_target: torch.Tensor  # (N, A, 4, H, W)
    obj_scale: torch.Tensor  # (N, A, H, W)
    obj_target: torch.Tensor  # (N, A, H, W)
    output: torch.Tensor  # (N, A, 5, H, W)

    @property
    def class_scale(self) -> torch.Tensor: ...  # (N, A, H, W)

    @property
    def class_target(self) -> torch.Tensor: ...  # (N, A, H, W) int64, -1 where no truth


def region_delta_magnitude(a: RegionRules, z: torch.Tensor) -> torch.Tensor:
    """M for every entry of darknet's region delta, (N, A, 5+C, H, W): the largest quantity its
    formula involves, from the rules' scales s and targets t and the logits z (N, A, 5+C, H, W).

    Entries 0-4: s·max(1, |t|, |p|), p the activated output (t and σ are at most 1, and a log's
    argument is close to 1); classes: class_scale·max(softmax, onehot). It is 0 where darknet
    writes no delta, so those entries must come out exactly 0.
    """
    s = torch.cat((a.coord_scale.unsqueeze(2).expand_as(a.coord_target), a.obj_scale.unsqueeze(2)), 2)
    t = torch.cat((a.coord_target, a.obj_target.unsqueeze(2)), 2)  # (N, A, 5, H, W)
    box = s * torch.maximum(t.abs(), a.output.abs()).clamp(min=1)
    p = torch.softmax(z[:, :, 5:].float(), 2)  # (N, A, C, H, W)
    onehot = torch.zeros_like(p).scatter_(2, a.class_target.clamp(min=0).unsqueeze(2), 1.0)
    return torch.cat((box, a.class_scale.unsqueeze(2) * torch.maximum(p, onehot)), 2)


def assert_region_delta(ours: torch.Tensor, ref: torch.Tensor, a: RegionRules, z: torch.Tensor,
                        what: str = "delta") -> dict[str, float]:
    """Assert ours within REGION_DELTA_ULPS of darknet's delta ref, part by part; return the
    largest error of each part in ulps of M. ours, ref, z: (N, A, 5+C, H, W); a: the rules."""
    m = region_delta_magnitude(a, z.to(a.output.device)).cpu()
    return {part: assert_ulps(ours[:, :, e], ref[:, :, e], REGION_DELTA_ULPS[part], floor=m[:, :, e],
                              what=f"{what}, {part}")
            for part, e in REGION_DELTA_ENTRIES.items()}


def region_stat_variation(key: str, value: float, count: int, slots: int) -> float:
    """How far one of darknet's printed diagnostics (`Region Avg IOU: ...`) can move between two
    float32 programs, absolute: a mean of `count` terms (of every one of the batch's `slots` for
    No Obj) summed in any order; Class's terms are softmax probabilities (SOFTMAX_ULPS). IoUs and
    σ are the same float operations on the same floats; Avg Recall is a count over count: exact."""
    if key == "avg_recall":
        return 0.0
    return mean_variation(value, slots if key == "no_obj" else count, SOFTMAX_ULPS if key == "class" else 0)
