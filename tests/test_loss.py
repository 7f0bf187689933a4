"""RegionLoss against darknet's own region layer (../shared/golden/region, README section A).

Oracle: darknet's `l.delta` after the GPU backward's logistic gradient (`delta_logit`), its printed
diagnostics, and the manifest's per-truth decisions. p01, p02, p04, p05, p06 are copied (only the
arrays used) into tests/fixtures/region; p03 (19x19, 0/3/30 truths) is read from ../shared.

How exact, on any IEEE float32 machine (CPU or CUDA; yolov2.darknet.ulp): |-grad − delta_logit| is
at most k ulps of M, M the magnitude of darknet's formula for the entry, with k counted below.
Decisions (slots, owners, counts) are asserted equal; which entries come out bit for bit is a
measurement of one machine (chapter 6 prints it), never asserted.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_path

import yolov2
from yolov2.darknet.cfg import parse_cfg, stock_cfg
from yolov2.darknet.region import RegionConfig, split_entries
from yolov2.darknet.ulp import (
    REGION_DELTA_ENTRIES,
    REGION_DELTA_ULPS,
    assert_region_delta,
    print_margin,
    region_delta_magnitude,
    region_stat_variation,
    ulp,
)
from yolov2.loss.region_loss import RegionLoss, check_inputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REGION = FIXTURES / "region"
CASES = json.loads((REGION / "cases.json").read_text())["cases"]
STAT_KEYS = {"avg_iou": "diag_avg_iou", "class": "diag_class", "obj": "diag_obj", "no_obj": "diag_no_obj",
             "avg_recall": "diag_avg_recall"}


def load_case(name: str) -> dict[str, np.ndarray]:
    path = REGION / f"{name}.npz"
    if not path.exists():
        path = shared_path("golden", "region", CASES[name]["file"])
    with np.load(path, allow_pickle=False) as d:
        return dict(d)


@cache
def run_case(name: str, device: str):
    """Darknet's case, our loss, the gradient and the assignment (cached: several tests read it)."""
    d = load_case(name)
    loss_fn = RegionLoss(d["anchors"].reshape(-1, 2), 20).to(device)
    logits = torch.tensor(d["input"], device=device, requires_grad=True)
    truth = torch.tensor(d["truth"], device=device)
    loss_fn(logits, truth, int(d["seen"])).backward()
    return d, loss_fn.stats, logits.grad.cpu(), loss_fn.explain(logits, truth, int(d["seen"]))


def assert_darknets_delta(grad: torch.Tensor, d: dict, a, what: str) -> dict[str, float]:
    """-grad (N, A*25, H, W) within REGION_DELTA_ULPS (yolov2.darknet.ulp) of darknet's delta_logit."""
    ref, z = (split_entries(torch.tensor(d[key]), 5) for key in ("delta_logit", "input"))
    return assert_region_delta(-split_entries(grad.cpu(), 5), ref, a, z, what)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_is_darknets_delta(name, device):
    d, _, grad, a = run_case(name, device)
    assert_darknets_delta(grad, d, a, f"{name} on {device}")


def test_the_bound_catches_one_ulp_too_many():
    """K + 1 ulps of M off darknet, in any part, fails; an entry darknet leaves at 0 must stay 0."""
    d, _, grad, a = run_case("p06", "cpu")
    ref, z = (split_entries(torch.tensor(d[key]), 5) for key in ("delta_logit", "input"))
    m = region_delta_magnitude(a, z)
    pos = tuple(torch.nonzero(a.positive)[0].tolist())  # (b, n, j, i) of a positive slot
    for part, e in REGION_DELTA_ENTRIES.items():
        entry = (pos[0], pos[1], e.start, *pos[2:])
        ours = -split_entries(grad, 5).clone()
        ours[entry] = ref[entry] + (REGION_DELTA_ULPS[part] + 1) * float(ulp(max(abs(ref[entry]), m[entry])))
        with pytest.raises(AssertionError, match=f"{part}: "):
            assert_region_delta(ours, ref, a, z)
    ours = -split_entries(grad, 5).clone()
    neg = torch.nonzero(~a.positive)[0].tolist()
    ours[neg[0], neg[1], 7, neg[2], neg[3]] = 1e-30  # a class delta where darknet writes none
    with pytest.raises(AssertionError, match="classes: "):
        assert_region_delta(ours, ref, a, z)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_stats_are_darknets_diagnostics(name, device):
    """Counts equal; every value within printf's half unit (5e-7) plus its float variation of
    darknet's printed number, and printed as darknet printed it wherever that variation cannot
    move the sixth decimal (the whole line coming out identical is a measurement: chapter 6)."""
    d, stats, _, a = run_case(name, device)
    assert stats["count"] == int(d["diag_count"])
    printed = dict(f.split(": ") for f in CASES[name]["printed"].replace(",  count", ", count").split(", "))
    fields = dict(zip(STAT_KEYS, ("Region Avg IOU", "Class", "Obj", "No Obj", "Avg Recall"), strict=True))
    n_slots = d["input"].size // 25
    for key, golden in STAT_KEYS.items():
        want = float(d[golden])
        if math.isnan(want):  # darknet printed -nan: count == 0
            assert math.isnan(stats[key]) and stats["count"] == 0 and printed[fields[key]] == "-nan"
            continue
        var = region_stat_variation(key, stats[key], stats["count"], n_slots)
        assert abs(stats[key] - want) <= 5e-7 + var, (key, stats[key], want, var)
        if print_margin([stats[key]], 6) > var:  # the same text on every machine: it must be darknet's
            assert f"{stats[key]:f}" == printed[fields[key]], key


@pytest.mark.parametrize("name", sorted(CASES))
def test_discrete_decisions_are_darknets(name):
    _, _, _, a = run_case(name, "cpu")
    case = CASES[name]
    got = [[b, t, a.cell_i[b, t].item(), a.cell_j[b, t].item(), a.best_anchor[b, t].item(),
            int(a.overwritten[b, t].item())] for b, t in zip(*torch.nonzero(a.valid).T.tolist(), strict=True)]
    assert got == case["truths"]
    assert int(a.ignore.sum()) == case["ignored"]
    assert int(a.positive.sum()) == case["positives"]
    assert int(a.valid.sum()) == len(case["truths"])


@pytest.mark.parametrize("name", sorted(n for n in CASES if (REGION / f"{n}.npz").exists()))
def test_fixture_is_a_faithful_copy(name):
    """The trimmed copies in tests/fixtures hold darknet's arrays bit for bit."""
    with np.load(shared_path("golden", "region", CASES[name]["file"])) as full:
        for key, value in load_case(name).items():
            np.testing.assert_array_equal(value, full[key], err_msg=key)


def test_golden_cases_cover_the_situations():
    """Zero truths, exactly 30, seen 12799 and 12800, a non-square grid are all among the cases."""
    d = {n: load_case(n) for n in ("p03", "p04", "p02", "p05")}  # p03 skips where ../shared is absent
    counts = (d["p03"]["truth"][..., 0] != 0).sum(1)
    assert counts.tolist() == [0, 3, 30]
    assert int(d["p04"]["seen"]) == 12799 and int(d["p02"]["seen"]) == 12800
    assert d["p05"]["input"].shape[2:] == (10, 13)  # H = 10, W = 13


@pytest.mark.parametrize("name", sorted(CASES))
def test_delta_and_cost_are_darknets(name):
    """`delta` is darknet's activation-space l.delta; its squared sum is darknet's *l.cost."""
    with np.load(shared_path("golden", "region", CASES[name]["file"]), allow_pickle=False) as d:
        loss_fn = RegionLoss(d["anchors"].reshape(-1, 2), 20)
        delta = loss_fn.delta(torch.tensor(d["input"]), torch.tensor(d["truth"]), int(d["seen"]))
        # measured <= 2.4e-7 (deltas up to ~5: a few float32 ulps)
        torch.testing.assert_close(delta, torch.tensor(d["delta_act"]), atol=1e-6, rtol=0)
        # darknet sums 1e4-1e5 squares in float32 (mag_array, then pow 2): measured <= 2.6e-6 relative
        cost = delta.double().square().sum().item()
        assert cost == pytest.approx(float(d["cost"]), rel=2e-5)


def test_lazy_export_and_from_region():
    section = next(s for s in parse_cfg(stock_cfg("yolov2-tiny-voc")) if s.type == "region")
    loss_fn = yolov2.RegionLoss.from_region(RegionConfig.from_section(section))
    d = load_case("p01")
    torch.testing.assert_close(loss_fn.anchors, torch.tensor(d["anchors"]).view(-1, 2), atol=0, rtol=0)
    p = loss_fn.params
    assert (p.object_scale, p.noobject_scale, p.class_scale, p.coord_scale) == (5, 1, 1, 1)
    assert (p.thresh, p.rescore, p.bias_match, loss_fn.num_classes) == (0.6, True, True, 20)


def test_from_region_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="softmax=0"):
        RegionLoss.from_region(RegionConfig(anchors=((1.0, 1.0),), softmax=False))


def _no_host_data(make):
    """torch.tensor / as_tensor that refuse to copy host data onto a device (a sync on CUDA)."""
    def guarded(data, *args, device=None, **kwargs):
        host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
        if host and device is not None and torch.device(device).type != "cpu":
            raise AssertionError(f"host data {data!r} copied to {device} inside the loss")
        return make(data, *args, device=device, **kwargs)
    return guarded


@pytest.mark.parametrize("bias_match", [True, False])
def test_no_host_sync_inside_the_loss(monkeypatch, bias_match):
    """On the meta device any .item(), nonzero() or boolean-mask indexing raises, and the guard
    catches host data copied to the device: none of these happens in the loss or its backward."""
    loss_fn = RegionLoss([(1.0, 1.5), (3.0, 2.0)], 3, bias_match=bias_match, validate=False).to("meta")
    logits = torch.randn(2, 16, 5, 7, device="meta", requires_grad=True)
    truth, seen = torch.rand(2, 30, 5, device="meta"), torch.full((), 5, device="meta")
    monkeypatch.setattr(torch, "tensor", _no_host_data(torch.tensor))
    monkeypatch.setattr(torch, "as_tensor", _no_host_data(torch.as_tensor))
    loss = loss_fn(logits, truth, seen)
    loss.backward()
    assert logits.grad.shape == logits.shape and loss_fn.stats.tensors["count"].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sync debug mode needs CUDA")
def test_no_cuda_sync_inside_the_loss():
    d = load_case("p02")
    loss_fn = RegionLoss(d["anchors"].reshape(-1, 2), 20, validate=False).cuda()
    logits = torch.tensor(d["input"], device="cuda", requires_grad=True)
    truth, seen = torch.tensor(d["truth"], device="cuda"), torch.tensor(int(d["seen"]), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(logits, truth, seen).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert_darknets_delta(logits.grad, d, loss_fn.explain(logits, truth, seen), "p02 on cuda, no sync")


# ---------------------------------------------------------------------------------------------- bad input
def _good():
    logits = torch.zeros(2, 2 * 8, 4, 4)  # A=2, C=3
    truth = torch.zeros(2, 4, 5)
    truth[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.3, 2.0])
    truth[1, :2] = torch.tensor([[0.3, 0.0, 0.1, 0.1, 0.0], [0.9, 0.9, 1.0, 1.0, 1.0]])
    return logits, truth


BAD_TRUTH = [
    ((0, 0, 0), 1.0, "x outside"), ((0, 0, 0), 1.5, "x outside"), ((0, 0, 0), -0.1, "x outside"),
    ((1, 1, 1), 1.0, "y outside"), ((0, 0, 1), -0.2, "y outside"), ((0, 0, 2), -0.1, "w outside"),
    ((0, 0, 2), 0.0, "w outside"), ((1, 1, 3), 1.01, "h outside"), ((1, 0, 4), 3.0, "class not an integer"),
    ((1, 0, 4), -1.0, "class not an integer"), ((1, 0, 4), 1.5, "class not an integer"),
    ((0, 0, 1), float("nan"), "y outside"),
]


@pytest.mark.parametrize("where,value,msg", BAD_TRUTH)
def test_bad_truth_is_a_clear_error(where, value, msg):
    logits, truth = _good()
    truth[where] = value
    b, t, _ = where
    with pytest.raises(ValueError, match=rf"truth\[{b}, {t}\].*{msg}"):
        RegionLoss([(1, 1), (2, 2)], 3)(logits, truth, 0)


def test_rows_after_the_terminator_are_not_checked():
    """Darknet never reads past the first x == 0, so garbage there is legal."""
    logits, truth = _good()
    truth[0, 2] = torch.tensor([7.0, -3.0, -1.0, 9.0, 99.0])
    check_inputs(logits, truth, 2, 3)


@pytest.mark.parametrize("bad,msg", [(float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf")])
def test_non_finite_logits_are_a_clear_error(bad, msg):
    logits, truth = _good()
    logits[1, 5, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"{msg}.*\(1, 5, 2, 3\)"):
        RegionLoss([(1, 1), (2, 2)], 3)(logits, truth, 0)


@pytest.mark.parametrize("shape", [(2, 15, 4, 4), (2, 16, 4)])
def test_wrong_logit_shape_is_a_clear_error(shape):
    _, truth = _good()
    with pytest.raises(ValueError, match=r"logits have shape.*A=2 anchors and C=3 classes"):
        RegionLoss([(1, 1), (2, 2)], 3)(torch.zeros(shape), truth, 0)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 4, 4), (2, 5)])
def test_wrong_truth_shape_is_a_clear_error(shape):
    logits, _ = _good()
    with pytest.raises(ValueError, match="truth has shape"):
        RegionLoss([(1, 1), (2, 2)], 3)(logits, torch.zeros(shape), 0)


@pytest.mark.parametrize("anchors", [[(1, 1, 1)], [(1, -2)], [[0.0, 1.0]]])
def test_bad_anchors_are_a_clear_error(anchors):
    with pytest.raises(ValueError, match="anchors must be"):
        RegionLoss(anchors, 3)


def test_without_validation_an_out_of_grid_truth_still_fails_loudly():
    """validate=False skips the checks; a truth at x = 1 then fails in the scatter, never aliases."""
    logits, truth = _good()
    truth[0, 0, 0] = 1.0
    with pytest.raises(RuntimeError, match="out of bounds"):
        RegionLoss([(1, 1), (2, 2)], 3, validate=False)(logits, truth, 0)
