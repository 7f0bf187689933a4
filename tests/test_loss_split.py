"""The loss split by rule (region_loss.rule_parts) and its columns in every run's log.csv.

Oracles: each part written out rule by rule in float64 from the Assignment's states, targets and
scales (chapter 6's rules: positives' coordinates and objectness, the negatives' no-object term,
ignored slots adding nothing, the prior pull on every non-positive slot while seen < 12800, the
classes); the sum of the parts against the loss within `split_bound` (two float32 sums of the same
non-negative terms); and an older log.csv, without the columns, read and resumed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_truths

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.darknet.ulp import U32, sum_ulps
from yolov2.data.synth import make_synthetic_voc
from yolov2.loss.assign import IGNORED, NEGATIVE, POSITIVE, PRIOR_SEEN
from yolov2.loss.region_loss import PART_KEYS, RegionLoss, loss_terms, split_bound
from yolov2.train.checkpoint import read_log
from yolov2.train.command import main as train_main
from yolov2.train.trainer import LOG_FIELDS, LOG_FIELDS_V1, Trainer

SYNTH = stock_cfg("yolov2-tiny-synth")  # 5 anchors, 5 classes


def batch(n: int = 3, size: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (n, 5*(5+5), size, size) and 1-4 random truths per image."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 50, size, size, generator=g) * 2
    truth = random_truths(n, g, most=4, span=0.6)
    return logits, truth


def loss_fn(thresh: float = 0.6) -> RegionLoss:
    r = Darknet(SYNTH).region
    return RegionLoss(r.anchors, r.classes, r.object_scale, r.noobject_scale, r.class_scale, r.coord_scale,
                      thresh, r.rescore, r.bias_match)


def reference_parts(fn: RegionLoss, logits, truth, seen) -> dict[str, float]:
    """Each rule's share of L in float64, from the states: the oracle for rule_parts."""
    a = fn.explain(logits, truth, seen)
    out = a.output.double()
    state = a.state
    d = (a.coord_target.double() - out[:, :, 0:4]) ** 2  # (N, A, 4, H, W)
    coord = 0.5 * a.coord_scale.double() * d.sum(2)
    obj = 0.5 * a.obj_scale.double() * (a.obj_target.double() - out[:, :, 4]) ** 2
    pos, neg = state == POSITIVE, state == NEGATIVE
    assert float(obj[state == IGNORED].abs().sum()) == 0  # ignored: no objectness term
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, truth, seen)
    z = x.detach().double().view(x.shape[0], 5, 10, *x.shape[2:])
    logp = torch.log_softmax(z[:, :, 5:], dim=2)
    cls = -(logp.gather(2, a.class_target.clamp(min=0)[:, :, None]).squeeze(2) * pos).sum()
    return {"loss_coord": float(coord[pos].sum()), "loss_obj": float(obj[pos].sum()),
            "loss_noobj": float(obj[neg].sum()), "loss_prior": float(coord[~pos].sum()),
            "loss_class": float(cls), "loss": float(loss.detach())}


@pytest.mark.parametrize("seen", [64, PRIOR_SEEN - 1, PRIOR_SEEN, 20000])
@pytest.mark.parametrize("thresh", [0.6, 0.2])
def test_parts_are_the_rules_and_sum_to_the_loss(seen, thresh):
    fn = loss_fn(thresh=thresh)
    logits, truth = batch(seed=seen % 7)
    ref = reference_parts(fn, logits, truth, seen)
    fn(logits.clone().requires_grad_(True), truth, seen)
    parts = {k: float(v) for k, v in fn.stats.parts.items()}
    assert list(parts) == list(PART_KEYS)
    terms = loss_terms(logits.shape, 5, truth.shape[1])
    for k in PART_KEYS:  # a float32 sum of some of the terms against their float64 sum
        assert abs(parts[k] - ref[k]) <= sum_ulps(terms) * 2 * U32 * ref["loss"] + 1e-6 * ref[k], k
    assert abs(sum(parts.values()) - ref["loss"]) <= split_bound(ref["loss"], terms)
    if seen >= PRIOR_SEEN:
        assert parts["loss_prior"] == 0.0  # the scale is 0: exactly nothing, not a rounding
    else:
        assert parts["loss_prior"] > 0
    assert min(parts["loss_coord"], parts["loss_obj"], parts["loss_noobj"], parts["loss_class"]) > 0


def test_ignored_slots_leave_the_no_object_part():
    """A lower thresh ignores more slots: their objectness leaves the no-object part."""
    logits, truth = batch(seed=1)
    noobj = {}
    for thresh in (0.6, 0.05):
        fn = loss_fn(thresh=thresh)
        fn(logits.clone().requires_grad_(True), truth, 64)
        ignored = int(fn.explain(logits, truth, 64).ignored.sum())
        noobj[thresh] = (float(fn.stats.parts["loss_noobj"]), ignored)
    assert noobj[0.05][1] > noobj[0.6][1] and noobj[0.05][0] < noobj[0.6][0]


def test_split_bound_is_tight_enough_to_catch_a_missing_part():
    logits, truth = batch()
    fn = loss_fn()
    loss = float(fn(logits.clone().requires_grad_(True), truth, 64).detach())
    parts = fn.stats.parts
    bound = split_bound(loss, loss_terms(logits.shape, 5, 30))
    assert bound < 0.01 * loss
    assert all(float(parts[k]) > bound for k in PART_KEYS)  # dropping any one part fails the check


def random_batches(n: int, images: int, size: int = 64, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        truth = random_truths(images, g)
        out.append((torch.rand(images, 3, size, size, generator=g), truth))
    return out


def test_trainer_rows_and_log_carry_the_split(tmp_path):
    start = Darknet(SYNTH)
    start.seen = PRIOR_SEEN - 8  # the pull stops in the second update
    start.save_weights(tmp_path / "start.weights")
    t = Trainer.from_batches(SYNTH, random_batches(3, 2), weights=tmp_path / "start.weights",
                             out=tmp_path / "run", batch=4, subdivisions=2, max_batches=PRIOR_SEEN // 4 + 2)
    (tmp_path / "run").mkdir()
    rows = []
    result = t.run(on_row=rows.append)
    assert [r["seen"] for r in rows] == [PRIOR_SEEN - 4, PRIOR_SEEN, PRIOR_SEEN + 4, PRIOR_SEEN + 8]
    for r in rows:
        split = sum(r[k] for k in PART_KEYS)
        assert abs(split - r["loss"]) <= split_bound(r["loss"], r["terms"])
    assert rows[0]["loss_prior"] > 0 and rows[1]["loss_prior"] > 0  # the 2nd update's 1st forward: 12796
    assert rows[2]["loss_prior"] == rows[3]["loss_prior"] == 0.0
    log = read_log(result.log)
    assert tuple(log) == LOG_FIELDS and len(log["step"]) == 4
    terms = rows[0]["terms"]  # every forward here: 2 images of 64 px
    split = sum(log[k] for k in PART_KEYS)
    assert np.all(np.abs(split - log["loss"]) <= [split_bound(v, terms, digits=6) for v in log["loss"]])


def test_cli_log_has_the_split_and_an_older_log_resumes(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", 8, 0, seed=5)
    out = tmp_path / "run"
    args = [str(SYNTH), str(voc), "--out", str(out), "--batch", "4", "--subdivisions", "1", "--sizes", "64",
            "--device", "cpu", "--workers", "0", "--seed", "3", "--checkpoint-every", "1", "--no-progress"]
    assert train_main([*args, "--max-batches", "2"]) == 0
    log = read_log(out)
    assert tuple(log) == LOG_FIELDS and np.all(np.isfinite(log["loss_noobj"]))
    # a run directory of an older version: its log without the split columns
    lines = (out / "log.csv").read_text().splitlines()
    old = [",".join(ln.split(",")[:len(LOG_FIELDS_V1)]) for ln in lines]
    assert old[0] == ",".join(LOG_FIELDS_V1)
    (out / "log.csv").write_text("\n".join(old) + "\n")
    assert read_log(out)["loss"].tolist() == log["loss"].tolist()  # read as it is
    assert train_main([*args, "--max-batches", "4", "--resume"]) == 0
    log2 = read_log(out)
    assert tuple(log2) == LOG_FIELDS and log2["step"].tolist() == [1, 2, 3, 4]
    assert np.isnan(log2["loss_coord"][:2]).all() and np.isfinite(log2["loss_coord"][2:]).all()
    assert log2["loss"][:2].tolist() == log["loss"].tolist()
    assert (out / "loss.png").is_file()
