"""yolov2.darknet.ulp: the ulp, ulp errors with a floor, the asserts and their messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from yolov2.darknet.ulp import (
    U32,
    assert_prints_stably,
    assert_range,
    assert_ulps,
    bit_exact,
    cpu_name,
    layer_bound,
    mean_variation,
    print_margin,
    range_error,
    sum_ulps,
    ulp,
    ulp_error,
    ulp_errors,
)


def steps(x: float, n: int) -> np.float32:
    """The float32 n representable numbers above float32(x) (below for n < 0)."""
    v = np.float32(x)
    for _ in range(abs(n)):
        v = np.nextafter(v, np.float32(np.inf if n > 0 else -np.inf), dtype=np.float32)
    return v


def test_ulp_is_float32_spacing():
    assert ulp(1.0) == 2.0**-23 == 2 * U32
    assert ulp(-1.0) == ulp(1.0) and ulp(1.5) == 2.0**-23 and ulp(2.0) == 2.0**-22
    assert ulp(np.nextafter(np.float32(1), np.float32(0))) == 2.0**-24  # just below 1: the finer binade
    assert ulp(0.0) == 2.0**-149  # the least subnormal
    assert ulp(torch.tensor([0.25, 8.0])).tolist() == [2.0**-25, 2.0**-20]
    x = np.float32(0.3)
    assert steps(0.3, 1) - x == ulp(x)
    for v in (1e-30, 0.7, 3.0, 1e30):  # U32·|x| < ulp(x) <= 2·U32·|x| for normal x
        assert U32 * v < ulp(v) <= 2 * U32 * v


@pytest.mark.parametrize("k", [0, 1, 3, 48])
@pytest.mark.parametrize("ref", [0.3, -2.5, 1.0, 7e-5])
def test_assert_ulps_accepts_k_and_catches_k_plus_one(k, ref):
    ref32 = np.float32(ref)
    away = 1 if ref > 0 else -1  # k steps away from zero: all in ref's binade (ref is not a power of 2 below)
    at_k, past_k = steps(ref, away * k), steps(ref, away * (k + 1))
    if abs(ref) == 1.0:  # above 1 the steps are ulp(1) wide
        assert abs(float(past_k) - 1.0) == (k + 1) * 2.0**-23
    assert ulp_error(at_k, ref32) == k
    assert assert_ulps(torch.tensor([at_k]), torch.tensor([ref32]), k) == k
    with pytest.raises(AssertionError, match=rf"case: {k + 1} ulps > {k} \(1 of 1 entries over\)"):
        assert_ulps(np.array([past_k]), np.array([ref32]), k, what="case")


def test_the_floor_measures_in_ulps_of_the_larger_magnitude():
    ref, ours = np.float32(1e-6), np.float32(1e-6) + np.float32(3 * 2.0**-23)  # 3 ulps of 1 off
    assert ulp_error(ours, ref) > 1e6  # in ulps of 1e-6: huge
    assert ulp_error(ours, ref, floor=1.0) == pytest.approx(3, abs=1e-6)
    with pytest.raises(AssertionError, match="floor=1"):
        assert_ulps(ours, ref, 2, floor=1.0)
    # a per-entry floor (an array broadcast to ref); exact zeros stay exact with any floor
    errs = ulp_errors([1.0, 0.0, 0.5], [1.0, 0.0, 0.5 + 2.0**-20], floor=np.array([4.0, 1.0, 0.0]))
    assert errs.tolist() == [0.0, 0.0, 2.0**-20 / 2.0**-24]
    with pytest.raises(AssertionError, match="ulps > 1"):
        assert_ulps([1e-30], [0.0], 1)  # without a floor nothing may differ from an exact 0


def test_nan_and_empty():
    assert ulp_errors([math.nan, 1.0], [math.nan, 1.0]).tolist() == [0.0, 0.0]
    assert ulp_errors([math.nan], [1.0]).tolist() == [math.inf]
    assert ulp_error([], []) == 0.0 and bit_exact([], []) == 1.0
    with pytest.raises(AssertionError, match="inf ulps"):
        assert_ulps([1.0], [math.nan], 1000)


def test_message_names_the_worst_entry():
    ref = torch.zeros(2, 3)
    ours = ref.clone()
    ours[1, 2] = 1e-3
    with pytest.raises(AssertionError) as e:
        assert_ulps(ours, ref, 5, floor=1.0, what="layer 7")
    msg = str(e.value)
    assert msg.startswith("layer 7: ") and "at index (1, 2)" in msg and "ours 0.001" in msg


def test_sum_ulps_covers_any_order():
    """Two orders of a float32 sum differ by at most sum_ulps(n) ulps of Σ|term|."""
    rng = np.random.default_rng(0)
    for n in (2, 10, 1000):
        t = rng.normal(size=(200, n)).astype(np.float32) * np.float32(10.0) ** rng.integers(-3, 3, (200, n))
        forward = np.zeros(200, np.float32)
        for i in range(n):
            forward = forward + t[:, i]  # float32 left to right
        backward = np.zeros(200, np.float32)
        for i in reversed(range(n)):
            backward = backward + t[:, i]
        assert_ulps(forward, backward, sum_ulps(n), floor=np.abs(t.astype(np.float64)).sum(1))


def test_range_error_and_bit_exact():
    ref = np.array([1.0, -4.0, 2.0])
    assert range_error(ref + [0, 0, 4e-5], ref) == pytest.approx(1e-5)
    assert assert_range(ref + [0, 0, 4e-5], ref, 1e-5 * 1.01) == pytest.approx(1e-5)
    with pytest.raises(AssertionError, match=r"1e-05 of max\|ref\| > 9e-06"):
        assert_range(ref + [0, 0, 4e-5], ref, 9e-6, what="conv")
    with pytest.raises(AssertionError, match="shape"):
        assert_range(ref[:2], ref, 1.0)
    assert bit_exact(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.5, 4.0])) == 0.75


def test_print_margin():
    assert print_margin([0.1234], 3) == pytest.approx(0.0001)  # 0.1235 would round either way
    assert print_margin([0.5426895021], 6) == pytest.approx(2.1e-9, rel=1e-3)
    assert assert_prints_stably([0.23, 0.7], 1, 0.01) == pytest.approx(0.02)
    with pytest.raises(AssertionError, match="could differ on another machine"):
        assert_prints_stably([0.5426895021], 6, 1e-7, what="avg_iou")


def test_cpu_name_says_where():
    name = cpu_name()
    assert isinstance(name, str) and name and "torch CPU kernels" in name


def test_mean_variation_covers_two_orders():
    rng = np.random.default_rng(1)
    for n in (1, 5, 33, 5415):
        t = rng.random(n).astype(np.float32)
        forward, backward = np.float32(0), np.float32(0)
        for v in t:
            forward = np.float32(forward + v)
        for v in t[::-1]:
            backward = np.float32(backward + v)
        means = np.float32(forward / np.float32(n)), np.float32(backward / np.float32(n))
        assert abs(float(means[0]) - float(means[1])) <= mean_variation(float(means[0]), n)
    assert mean_variation(0.5, 10, term_ulps=46) > mean_variation(0.5, 10)


@torch.no_grad()
def test_layer_bound_covers_a_float32_convolution_and_no_more():
    """A batch-norm conv layer in float32 against the same layer in float64 (the exact value, for
    float32 purposes) stays within layer_bound; k + 1 ulps of M off does not."""
    from yolov2.darknet.cfg import stock_cfg
    from yolov2.darknet.model import Darknet

    net = Darknet(stock_cfg("yolov2-tiny-synth")).eval()
    conv = net.layers[2]  # 3x3, 8 -> 16 filters, batch norm, leaky
    gen = torch.Generator().manual_seed(0)
    conv.bn.running_mean.normal_(0, 0.5, generator=gen)
    conv.bn.running_var.uniform_(1e-4, 2.0, generator=gen)
    conv.bn.weight.normal_(0, 1, generator=gen)
    x = torch.randn(2, conv.conv.in_channels, 12, 12, generator=gen)
    k, m = layer_bound(conv, x)
    assert k == 2 * sum_ulps(8 * 9) + 16 and m.shape == (2, 16, 12, 12)
    exact = conv.double()(x.double())
    out = conv.float()(x)
    assert_ulps(out, exact, k, floor=m)
    off = exact + (k + 1) * torch.from_numpy(ulp(torch.maximum(exact.abs(), m)))
    with pytest.raises(AssertionError, match="ulps >"):
        assert_ulps(off, exact, k, floor=m)
    assert layer_bound(net.layers[1], x) == (0.0, 0.0)  # a maxpool is exact
