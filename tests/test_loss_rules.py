"""Each region-layer rule alone, on hand-made cases whose answer is obvious.

The grid is 5 wide and 4 high (W != H catches swapped axes), A = 2 anchors, C = 3 classes.
Slots not set by a test predict tiny boxes (w = h = exp(-8) cells), whose IoU with any truth is ~0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from yolov2.darknet.boxes import box_iou, box_iou_matrix, box_iou_outer
from yolov2.darknet.region import split_entries
from yolov2.loss import assign as assign_module
from yolov2.loss.assign import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    centred_iou,
    coordinate_targets,
    ignore_rule,
    match_truths,
    prior_pull,
    used_truths,
)
from yolov2.loss.region_loss import RegionLoss

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ANCHORS = [(1.0, 1.0), (3.0, 3.0)]
A, C, H, W = 2, 3, 4, 5
TRUTH = (2.3 / W, 1.6 / H, 0.5, 0.6, 1.0)  # cell (i=2, j=1), best anchor 1 (3x3 cells)


def blank(n: int = 1) -> torch.Tensor:
    """Logits (N, A, 5+C, H, W) predicting tiny boxes everywhere."""
    z = torch.zeros(n, A, 5 + C, H, W)
    z[:, :, 2:4] = -8.0
    return z


def put_box(z, b, n, j, i, box, obj=0.0):
    """Set slot (b, n, j, i) to predict `box` (normalised centre-size) with objectness logit obj."""
    x, y, w, h = box
    z[b, n, 0, j, i] = math.log((x * W - i) / (1 - (x * W - i)))
    z[b, n, 1, j, i] = math.log((y * H - j) / (1 - (y * H - j)))
    z[b, n, 2, j, i] = math.log(w * W / ANCHORS[n][0])
    z[b, n, 3, j, i] = math.log(h * H / ANCHORS[n][1])
    z[b, n, 4, j, i] = obj


def truths(*rows, n: int = 1) -> torch.Tensor:
    t = torch.zeros(n, max(len(rows), 1), 5)
    if rows:
        t[0, : len(rows)] = torch.tensor(rows)
    return t


def run(z, truth, seen=12800, device="cpu", **kw):
    """Loss, -gradient as (N, A, 5+C, H, W) (darknet's delta), stats and assignment."""
    logits = z.reshape(z.shape[0], -1, H, W).to(device).requires_grad_()
    loss_fn = RegionLoss(ANCHORS, C, **kw).to(device)
    truth = truth.to(device)
    loss = loss_fn(logits, truth, seen)
    loss.backward()
    return loss, -split_entries(logits.grad, A).cpu(), loss_fn.stats, loss_fn.explain(logits, truth, seen)


def concentric(box, ratio):
    """A box with the same centre and aspect whose IoU with `box` is `ratio` (< 1)."""
    x, y, w, h = box
    return (x, y, w * math.sqrt(ratio), h * math.sqrt(ratio))


def dsig(y):
    return y * (1 - y)


@pytest.mark.parametrize("device", DEVICES)
def test_prediction_equal_to_its_target_has_no_coordinate_gradient(device):
    z = blank()
    put_box(z, 0, 1, 1, 2, TRUTH[:4])
    _, delta, _, a = run(z, truths(TRUTH), device=device)
    assert a.state[0, 1, 1, 2] == POSITIVE and int(a.positive.sum()) == 1
    assert delta[0, 1, 0:4, 1, 2].abs().max() < 1e-6
    assert a.coord_scale[0, 1, 1, 2].item() == pytest.approx(2 - 0.5 * 0.6)  # coord_scale·(2 − w·h)
    moved = delta[:, :, 0:4].clone()
    moved[0, 1, :, 1, 2] = 0
    assert moved.abs().max() == 0  # seen >= 12800: no coordinate gradient anywhere else


def test_coordinate_gradient_is_scaled_difference_to_target():
    z = blank()
    z[0, 1, 0:4, 1, 2] = torch.tensor([0.4, -0.2, 0.1, 0.3])
    _, delta, _, _ = run(z, truths(TRUTH), coord_scale=2.0)
    s = 2.0 * (2 - 0.5 * 0.6)
    tx, ty = 2.3 - 2, 1.6 - 1
    tw, th = math.log(0.5 * W / 3.0), math.log(0.6 * H / 3.0)
    sx, sy = torch.sigmoid(torch.tensor(0.4)).item(), torch.sigmoid(torch.tensor(-0.2)).item()
    want = [s * (tx - sx) * dsig(sx), s * (ty - sy) * dsig(sy), s * (tw - 0.1), s * (th - 0.3)]
    torch.testing.assert_close(delta[0, 1, 0:4, 1, 2], torch.tensor(want), atol=1e-6, rtol=1e-5)


def test_coordinate_targets_in_t_space():
    t, valid = used_truths(truths(TRUTH))
    i, j, n = match_truths(t, valid, torch.tensor(ANCHORS), H, W)
    assert (i.item(), j.item(), n.item()) == (2, 1, 1)
    target, scale = coordinate_targets(t, i, j, n, torch.tensor(ANCHORS), H, W, coord_scale=1.0)
    want = [0.3, 0.6, math.log(0.5 * 5 / 3), math.log(0.6 * 4 / 3)]
    torch.testing.assert_close(target[0, 0], torch.tensor(want), atol=1e-6, rtol=0)
    assert scale.item() == pytest.approx(1.7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio,ignored", [(0.61, True), (0.59, False)])
def test_ignore_rule_zeroes_objectness_above_thresh(ratio, ignored, device):
    z = blank()
    put_box(z, 0, 0, 1, 2, concentric(TRUTH[:4], ratio), obj=0.7)  # anchor 0: not the best anchor
    _, delta, _, a = run(z, truths(TRUTH), device=device)
    assert a.best_iou[0, 0, 1, 2].item() == pytest.approx(ratio, abs=1e-5)
    assert a.state[0, 0, 1, 2] == (IGNORED if ignored else NEGATIVE)
    y = torch.sigmoid(torch.tensor(0.7)).item()
    want = 0.0 if ignored else -y * dsig(y)  # noobject_scale·(0 − σ)·σ'
    assert delta[0, 0, 4, 1, 2].item() == pytest.approx(want, abs=1e-7)


def test_ignore_rule_is_strict_in_float32():
    # thresh .6 is 0.600000024f; an IoU equal to it is not ignored, the next float up is
    iou = torch.tensor([0.6, np.nextafter(np.float32(0.6), np.float32(1)), 0.5999999])
    assert ignore_rule(iou, 0.6).tolist() == [False, True, False]


def test_later_truth_wins_the_slot():
    first, second = (2.2 / W, 1.5 / H, 0.5, 0.6, 0.0), (2.4 / W, 1.7 / H, 0.55, 0.6, 2.0)
    z = blank()
    put_box(z, 0, 1, 1, 2, TRUTH[:4], obj=0.3)
    _, delta, stats, a = run(z, truths(first, second), class_scale=2.0)
    assert a.best_anchor[0].tolist() == [1, 1] and a.overwritten[0].tolist() == [True, False]
    assert a.truth_index[0, 1, 1, 2].item() == 1 and a.class_target[0, 1, 1, 2].item() == 2
    t, _ = used_truths(truths(second))
    pred = a.pred[0, 1, 1, 2]
    assert a.obj_target[0, 1, 1, 2].item() == pytest.approx(box_iou(pred, t[0, 0, :4]).item())
    assert a.coord_target[0, 1, 0, 1, 2].item() == pytest.approx(2.4 - 2, abs=1e-6)
    p = torch.softmax(z[0, 1, 5:, 1, 2], 0)
    torch.testing.assert_close(delta[0, 1, 5:, 1, 2], 2.0 * (torch.eye(C)[2] - p))
    assert stats["count"] == 2  # both truths count in darknet's diagnostics
    assert stats["avg_iou"] == pytest.approx(a.truth_iou[0].mean().item())
    swapped = run(z, truths(second, first))[3]
    assert swapped.class_target[0, 1, 1, 2].item() == 0 and swapped.overwritten[0].tolist() == [True, False]


@pytest.mark.parametrize("anchors", [[(1.0, 2.0), (2.0, 1.0)], [(2.0, 1.0), (1.0, 2.0)],
                                     [(0.5, 0.5), (2.0, 2.0), (2.0, 2.0)]])
def test_first_anchor_wins_a_tie(anchors):
    """A square truth on a square grid is equally like a tall and a wide anchor (or two equal
    anchors): darknet's strict > keeps the first of them."""
    t, valid = used_truths(truths((0.5, 0.5, 0.3, 0.3, 0.0)))
    _, _, n = match_truths(t, valid, torch.tensor(anchors), 5, 5)
    assert n.item() == (1 if anchors[0] == (0.5, 0.5) else 0)


def test_cell_index_is_a_float32_product():
    """x = .7f on a 10-grid: the float product is 7.0f (i = 7); in float64 it would be 6."""
    x = np.float32(0.7)
    assert int(np.float64(x) * 10) == 6
    below = np.nextafter(np.float32(6 / 13), np.float32(0))
    t, valid = used_truths(torch.tensor([[[x, 0.9, 0.1, 0.1, 0], [np.float32(6 / 13), 0.5, 0.1, 0.1, 0],
                                          [below, 0.5, 0.1, 0.1, 0]]]))
    i10, j10, _ = match_truths(t[:, :1], valid[:, :1], torch.tensor(ANCHORS), 10, 10)
    assert (i10.item(), j10.item()) == (7, 9)
    i13, _, _ = match_truths(t[:, 1:], valid[:, 1:], torch.tensor(ANCHORS), 13, 13)
    assert i13[0].tolist() == [6, 5]


def test_bias_match_off_uses_the_predicted_shapes():
    z = blank()
    put_box(z, 0, 0, 1, 2, TRUTH[:4])  # anchor 0 predicts the truth's shape exactly
    assert run(z, truths(TRUTH))[3].best_anchor[0, 0].item() == 1  # bias_match: anchor shapes
    assert run(z, truths(TRUTH), bias_match=False)[3].best_anchor[0, 0].item() == 0


@pytest.mark.parametrize("seen,pulled", [(0, True), (12799, True), (12800, False), (50000, False)])
def test_prior_pull_while_seen_below_12800_even_on_ignored_slots(seen, pulled):
    z = blank()
    put_box(z, 0, 0, 1, 2, concentric(TRUTH[:4], 0.7), obj=0.2)  # an ignored slot
    _, delta, _, a = run(z, truths(TRUTH), seen=seen)
    assert a.state[0, 0, 1, 2] == IGNORED and delta[0, 0, 4, 1, 2] == 0
    target = prior_pull(torch.tensor(ANCHORS), H, W)[0, :, 1, 2]  # (tx, ty, tw, th) of anchor 0
    torch.testing.assert_close(target, torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=1e-6, rtol=0)
    p = z[0, 0, 0:4, 1, 2].clone()
    p[:2] = torch.sigmoid(p[:2])
    want = 0.01 * (target - p) * torch.tensor([dsig(p[0]), dsig(p[1]), 1, 1]) if pulled else torch.zeros(4)
    torch.testing.assert_close(delta[0, 0, 0:4, 1, 2], want, atol=1e-7, rtol=1e-5)
    assert bool(a.prior_active) == pulled
    torch.testing.assert_close(run(z, truths(TRUTH), seen=torch.tensor(seen))[1], delta)  # seen as a tensor


@pytest.mark.parametrize("rescore,ratio", [(True, 0.8), (True, 0.45), (False, 0.8)])
def test_rescore_target_is_the_iou_of_the_prediction(rescore, ratio):
    z = blank()
    put_box(z, 0, 1, 1, 2, concentric(TRUTH[:4], ratio), obj=-0.5)
    _, delta, _, a = run(z, truths(TRUTH), rescore=rescore)
    iou = box_iou(a.pred[0, 1, 1, 2], torch.tensor(TRUTH[:4])).item()
    assert iou == pytest.approx(ratio, abs=1e-5)
    target = iou if rescore else 1.0
    assert a.obj_target[0, 1, 1, 2].item() == pytest.approx(target)
    y = torch.sigmoid(torch.tensor(-0.5)).item()
    assert delta[0, 1, 4, 1, 2].item() == pytest.approx(5 * (target - y) * dsig(y), abs=1e-6)


def test_class_rule_is_softmax_cross_entropy():
    z = blank()
    z[0, 1, 5:, 1, 2] = torch.tensor([2.0, -1.0, 0.5])
    _, delta, _, a = run(z, truths(TRUTH), class_scale=3.0)  # class 1
    p = torch.softmax(torch.tensor([2.0, -1.0, 0.5]), 0)
    torch.testing.assert_close(delta[0, 1, 5:, 1, 2], 3.0 * (torch.eye(C)[1] - p))
    others = delta[:, :, 5:].clone()
    others[0, 1, :, 1, 2] = 0
    assert others.abs().max() == 0 and (a.class_target >= 0).sum() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_zero_truths_leave_only_the_negatives(device):
    z = blank(2)
    z[:, :, 4] = torch.linspace(-2, 2, 2 * A * H * W).view(2, A, H, W)
    loss, delta, stats, a = run(z, truths(n=2), device=device, noobject_scale=0.5)
    y = torch.sigmoid(z[:, :, 4])
    assert loss.item() == pytest.approx((0.25 * y.square()).sum().item(), rel=1e-6)  # ½·s·(0 − σ)²
    torch.testing.assert_close(delta[:, :, 4], -0.5 * y * dsig(y))
    assert (a.state == NEGATIVE).all() and stats["count"] == 0 and math.isnan(stats["avg_iou"])
    assert stats["no_obj"] == pytest.approx(y.mean().item())


def test_at_most_30_rows_and_the_list_ends_at_x_zero():
    rows = [((k % 5 + 0.5) / W, (k % 4 + 0.5) / H, 0.1 + 0.02 * k, 0.2, k % C) for k in range(35)]
    z = blank()
    z[0, :, 4] = 0.3
    full = run(z, truths(*rows))
    first30 = run(z, truths(*rows[:30]))
    assert full[2]["count"] == 30 == int(full[3].valid.sum())
    torch.testing.assert_close(full[1], first30[1], atol=0, rtol=0)
    ended = list(rows[:3]) + [(0.0, 0.5, 0.1, 0.1, 0)] + list(rows[4:9])  # x == 0 ends the list
    cut = run(z, truths(*ended))
    assert cut[2]["count"] == 3
    torch.testing.assert_close(cut[1], run(z, truths(*rows[:3]))[1], atol=0, rtol=0)


def test_assignment_shapes():
    z = blank(3)
    a = run(z, torch.cat([truths(TRUTH), truths(TRUTH), truths(TRUTH)]))[3]
    for name in ("state", "truth_index", "best_iou", "ignore", "iou", "coord_scale", "obj_target",
                 "obj_scale", "class_target", "class_scale"):
        assert getattr(a, name).shape == (3, A, H, W), name
    assert a.coord_target.shape == (3, A, 4, H, W) and a.pred.shape == (3, A, H, W, 4)
    for name in ("valid", "cell_i", "cell_j", "best_anchor", "overwritten", "truth_iou"):
        assert getattr(a, name).shape == (3, 1), name
    assert (a.truth_index[a.positive] == 0).all() and (a.truth_index[~a.positive] == -1).all()


def test_box_iou_outer_and_centred_iou_are_darknets_box_iou_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 40, 4, generator=g), torch.rand(3, 9, 4, generator=g)
    b[0, 0] = a[0, 0]  # identical boxes
    b[1, 1] = torch.tensor([5.0, 5.0, 0.1, 0.1])  # disjoint
    b[2, 2] = torch.tensor([a[2, 3, 0], a[2, 3, 1], 1e-4, 1e-4])  # contained
    assert torch.equal(box_iou_outer(a, b), box_iou_matrix(a, b))
    wh1, wh2 = torch.rand(50, 2, generator=g), torch.rand(7, 2, generator=g)
    zeros = torch.zeros(1, 1, 2)
    want = box_iou(torch.cat((zeros.expand(50, 1, 2), wh1[:, None]), -1),
                   torch.cat((zeros.expand(1, 7, 2), wh2[None]), -1))
    assert torch.equal(centred_iou(wh1[:, None], wh2[None]), want)


def test_trimming_unused_truth_rows_on_cpu_changes_nothing(monkeypatch):
    """On CPU the IoU table keeps only rows some image uses; the full table gives the same answer."""
    z = blank(2)
    z[:, :, 0:4] = torch.randn(2, A, 4, H, W, generator=torch.Generator().manual_seed(5)) * 0.5
    t = torch.zeros(2, 30, 5)
    t[0, :2] = torch.tensor([TRUTH, (0.7, 0.3, 0.3, 0.2, 2.0)])
    t[1, :1] = torch.tensor([(0.15, 0.8, 0.4, 0.5, 0.0)])
    trimmed = run(z, t, seen=0)
    monkeypatch.setattr(assign_module, "used_rows", lambda valid: valid.shape[1])  # class rows too
    full = run(z, t, seen=0)
    assert (trimmed[3].rows, full[3].rows) == (2, 30)
    names = [f.name for f in dataclasses.fields(trimmed[3]) if f.name not in ("params", "rows")]
    for name in names + ["state", "iou", "class_target", "class_scale"]:
        got, want = getattr(trimmed[3], name), getattr(full[3], name)
        torch.testing.assert_close(got, want, atol=0, rtol=0, msg=name)
    torch.testing.assert_close(trimmed[1], full[1], atol=0, rtol=0)
    assert dict(trimmed[2]) == dict(full[2])  # the stats


def test_float64_and_bfloat16_logits():
    z = blank()
    put_box(z, 0, 1, 1, 2, concentric(TRUTH[:4], 0.8), obj=0.5)
    z[0, 1, 5:, 1, 2] = torch.tensor([0.3, -0.4, 1.0])
    want = run(z, truths(TRUTH), seen=0)[1]
    logits = z.reshape(1, -1, H, W).double().requires_grad_()
    before = logits.detach().clone()
    RegionLoss(ANCHORS, C)(logits, truths(TRUTH), 0).backward()
    assert torch.equal(logits.detach(), before)  # decoding never writes into the logits
    torch.testing.assert_close(-split_entries(logits.grad, A).float(), want, atol=1e-6, rtol=1e-5)
    half = z.reshape(1, -1, H, W).bfloat16().requires_grad_()
    RegionLoss(ANCHORS, C)(half, truths(TRUTH), 0).backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(-split_entries(half.grad, A).float(), want, atol=2e-2, rtol=2e-2)


def test_one_loss_across_grid_sizes_equals_fresh_ones():
    """The kept prior and IoU scratch follow the grid (multi-scale training) and the anchors."""
    g = torch.Generator().manual_seed(7)
    batches = []
    for h, w, k in [(4, 5, 3), (6, 6, 30), (4, 5, 1)]:
        truth = torch.zeros(2, 30, 5)
        truth[:, :k, :2] = 0.05 + 0.9 * torch.rand(2, k, 2, generator=g)
        truth[:, :k, 2:4] = 0.1 + 0.5 * torch.rand(2, k, 2, generator=g)
        batches.append((torch.randn(2, A * (5 + C), h, w, generator=g), truth))
    kept = RegionLoss(ANCHORS, C)
    # 5.11 cells on a 5-wide grid: float32 (5.11/5)*5/5.11 != 1, the one prior target that
    # depends on the anchors (log of it, 1.2e-7)
    for anchors in (ANCHORS, [(2.0, 1.0), (5.11, 3.0)]):
        kept.anchors.copy_(torch.tensor(anchors))
        for logits, truth in batches:
            grads = []
            for loss_fn in (kept, RegionLoss(anchors, C)):
                x = logits.clone().requires_grad_()
                loss_fn(x, truth, 100).backward()
                grads.append(x.grad)
            torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)


@pytest.mark.parametrize("seen", [0, 12800])
def test_closed_form_gradient_is_the_gradient_of_the_written_loss(seen):
    """The terms compute L and its gradient together; autograd through L as the loss module writes it
    down (targets and scales of the Assignment held constant, float64) gives the same value and gradient."""
    g = torch.Generator().manual_seed(11)
    z0 = torch.randn(3, A, 5 + C, H, W, generator=g)
    t = torch.zeros(3, 4, 5)
    # the last two rows share a slot: the later one owns it
    t[0, :3] = torch.tensor([TRUTH, (0.7, 0.3, 0.3, 0.2, 2.0), (0.71, 0.31, 0.25, 0.2, 0.0)])
    t[2, :1] = torch.tensor([(0.15, 0.8, 0.4, 0.5, 0.0)])
    logits = z0.reshape(3, -1, H, W).requires_grad_()
    loss_fn = RegionLoss(ANCHORS, C)
    loss = loss_fn(logits, t, seen)
    (3 * loss).backward()  # the incoming gradient scales the closed form
    a = loss_fn.explain(logits, t, seen)
    assert a.overwritten[0].tolist() == [False, True, False, False]

    z = z0.double().requires_grad_()
    p = torch.cat((torch.sigmoid(z[:, :, 0:2]), z[:, :, 2:4]), 2)
    written = 0.5 * (a.coord_scale.unsqueeze(2) * (a.coord_target - p).square()).sum()
    written = written + 0.5 * (a.obj_scale * (a.obj_target - torch.sigmoid(z[:, :, 4])).square()).sum()
    logp = torch.log_softmax(z[:, :, 5:], 2).gather(2, a.class_target.clamp(min=0).unsqueeze(2)).squeeze(2)
    written = written - (a.class_scale * logp).sum()
    written.backward()
    torch.testing.assert_close(loss.double(), written.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(split_entries(logits.grad, A).double(), 3 * z.grad, rtol=1e-5, atol=1e-6)
    elsewhere = ~a.positive.unsqueeze(2).expand(-1, -1, C, -1, -1)  # (N, A, C, H, W)
    assert (split_entries(logits.grad, A)[:, :, 5:][elsewhere] == 0).all()  # no class delta off the positives
