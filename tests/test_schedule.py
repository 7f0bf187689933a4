"""Darknet's learning-rate policies at their boundaries, and darknet's SGD update as torch SGD.

Oracles: the schedules the stock cfgs describe (tiny VOC `steps=-1,100,20000,30000 scales=.1,10,.1,.1`;
yolov2-voc `burn_in=1000`, `steps=40000,60000`), written out by hand from darknet's
`get_current_rate`; and a direct re-statement of `update_convolutional_layer`'s three lines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from yolov2.darknet.cfg import CfgError, parse_cfg, parse_cfg_text, stock_cfg
from yolov2.train.schedule import Schedule, darknet_sgd, set_rate, update_due


def net_section(text: str):
    return parse_cfg_text("[net]\n" + text)[0]


TINY = [(0, 1e-4), (1, 1e-4), (99, 1e-4), (100, 1e-3), (19999, 1e-3), (20000, 1e-4), (29999, 1e-4),
        (30000, 1e-5), (40200, 1e-5)]
VOC = [(0, 0.0), (1, 1e-3 * 0.001**4), (500, 1e-3 * 0.5**4), (999, 1e-3 * 0.999**4), (1000, 1e-3),
       (39999, 1e-3), (40000, 1e-4), (59999, 1e-4), (60000, 1e-5)]


@pytest.mark.parametrize(("batch_num", "expected"), TINY)
def test_tiny_voc_steps(batch_num, expected):
    sched = Schedule.from_net(parse_cfg(stock_cfg("yolov2-tiny-voc"))[0])
    assert sched.rate(batch_num) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("batch_num", "expected"), VOC)
def test_yolov2_voc_burn_in_and_steps(batch_num, expected):
    sched = Schedule.from_net(parse_cfg(stock_cfg("yolov2-voc"))[0])
    assert sched.rate(batch_num) == pytest.approx(expected, rel=1e-6, abs=1e-18)


def test_float32_arithmetic():
    # darknet: float rate = learning_rate; rate *= scales[i] -- float32 products, not decimal ones
    sched = Schedule.from_net(parse_cfg(stock_cfg("yolov2-tiny-voc"))[0])
    assert sched.rate(5) == float(np.float32(0.001) * np.float32(0.1))
    assert sched.rate(100) == float(np.float32(0.001) * np.float32(0.1) * np.float32(10))


@pytest.mark.parametrize("batch_num", [0, 1, 100, 20000, 40000])
def test_unsigned_quirk_of_the_final_darknet(batch_num):
    # pjreddie's last code compares int steps[i] > size_t batch_num: -1 becomes SIZE_MAX, rate never moves
    net = parse_cfg(stock_cfg("yolov2-tiny-voc"))[0]
    assert Schedule.from_net(net, unsigned_steps=True).rate(batch_num) == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize(("text", "batch_num", "expected"), [
    ("policy=constant\nlearning_rate=0.01", 12345, 0.01),
    ("policy=step\nlearning_rate=0.01\nstep=10\nscale=.5", 25, 0.01 * 0.25),
    ("policy=step\nlearning_rate=0.01\nstep=10\nscale=.5", 9, 0.01),
    ("policy=exp\nlearning_rate=0.01\ngamma=.99", 3, 0.01 * 0.99**3),
    ("policy=poly\nlearning_rate=0.01\npower=2\nmax_batches=100", 50, 0.01 * 0.25),
    ("policy=poly\nlearning_rate=0.01\nmax_batches=100", 50, 0.01 * 0.5**4),  # power defaults to 4
    ("policy=sigmoid\nlearning_rate=0.01\ngamma=-1\nstep=10", 10, 0.005),
    ("learning_rate=0.01\nburn_in=10\npower=1\npolicy=constant", 5, 0.005),
])
def test_other_policies(text, batch_num, expected):
    assert Schedule.from_net(net_section(text)).rate(batch_num) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("text", "message"), [
    ("policy=random", "unsupported policy 'random'"),
    ("policy=steps\nsteps=10,20", "needs both 'steps' and 'scales'"),
    ("policy=steps\nsteps=10,20\nscales=.1", "1 scales for 2 steps"),
    ("policy=steps\nsteps=a,20\nscales=.1,.1", "steps must be integers"),
])
def test_bad_policy_sections(text, message):
    with pytest.raises(CfgError, match=message) as e:
        Schedule.from_net(net_section(text))
    assert "line 1" in str(e.value)


# --------------------------------------------------------------------------- the update rule


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.LeakyReLU(0.1),
                         nn.Conv2d(3, 4, 1, bias=True)).double()


def darknet_update(params, updates, grads, decayed, rate, momentum, decay, batch):
    """update_convolutional_layer: u -= g (the backward), u += -decay*batch*w, w += lr/batch*u, u *= m."""
    for name, w in params.items():
        updates[name] -= grads[name]  # darknet's backward adds delta = minus the gradient
        if decayed[name]:
            updates[name] += -decay * batch * w
        w += rate / batch * updates[name]
        updates[name] *= momentum


def test_darknet_sgd_equals_darknets_update():
    # darknet's decay and rates are float32 values (net->decay, get_current_rate)
    model, batch, momentum, decay = toy_model(), 8, 0.9, float(np.float32(0.0005))
    opt = darknet_sgd(model, momentum, decay, batch)
    decayed = {n: n in ("0.weight", "3.weight") for n, _ in model.named_parameters()}
    params = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    updates = {n: np.zeros_like(p) for n, p in params.items()}
    gen = torch.Generator().manual_seed(1)
    for rate in map(float, np.float32([1e-3, 1e-2, 5e-3, 5e-3, 1e-4])):  # as burn_in and steps do
        x = torch.randn(batch, 2, 6, 6, generator=gen, dtype=torch.float64)
        loss = (model(x) ** 2).sum()  # summed over the batch, like the region loss
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        set_rate(opt, rate, batch)
        opt.step()
        darknet_update(params, updates, grads, decayed, rate, momentum, decay, batch)
        for n, p in model.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), params[n], rtol=1e-12, atol=1e-15, err_msg=n)


def test_decay_only_on_conv_weights():
    model = toy_model()
    opt = darknet_sgd(model, 0.9, 0.0005, 64)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.0005 * 64)
    assert opt.param_groups[1]["weight_decay"] == 0
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"0.weight", "3.weight"}  # not BN scales (1.weight), not biases


# --------------------------------------------------------------------------- when darknet updates


@pytest.mark.parametrize(("minibatch", "subdivisions", "seen_start", "updates"), [
    (2, 1, 0, [1, 1, 1]),  # golden T1: every forward (seen 2, 4, 6)
    (2, 2, 0, [0, 1, 0, 1]),  # seen 2, 4, 6, 8: seen/2 = 1, 2, 3, 4
    (2, 2, 3, [1, 0, 1, 0, 1]),  # seen 5, 7, 9, 11, 13: seen/2 = 2, 3, 4, 5, 6 -- after one forward
    (1, 3, 1, [0, 1, 0, 0, 1, 0]),  # seen 2..7: the first update after two forwards
    (4, 2, 12792, [0, 1, 0, 1]),  # chapter 7's trainer: batch 8 = 2 x 4, 12792 a multiple of 8
])
def test_update_follows_seen_not_a_count_of_forwards(minibatch, subdivisions, seen_start, updates):
    # README: seen += batch before the forward; update if (seen/batch) % subdivisions == 0
    seen = [seen_start + minibatch * (k + 1) for k in range(len(updates))]
    assert [int(update_due(s, minibatch, subdivisions)) for s in seen] == updates


def test_one_update_in_every_subdivisions_forwards():
    for seen_start in range(12):
        due = [update_due(seen_start + 2 * (k + 1), 2, 3) for k in range(30)]
        assert all(sum(due[k:k + 3]) == 1 for k in range(28)), seen_start


def test_burn_in_comes_before_the_steps_and_the_unsigned_switch():
    # README: burn_in is checked first; then steps, whose -1 is SIZE_MAX under size_t batch_num
    net = net_section("learning_rate=0.01\nburn_in=10\npower=2\npolicy=steps\nsteps=-1,5,20\n"
                      "scales=.1,10,.5")
    signed, unsigned = Schedule.from_net(net), Schedule.from_net(net, unsigned_steps=True)
    assert signed.rate(5) == unsigned.rate(5) == float(np.float32(np.float32(0.01) * 0.25))
    # at 12 the steps -1 and 5 have passed (x.1 x10) for the cfg's meaning; none for the final darknet
    assert signed.rate(12) == float(np.float32(np.float32(0.01) * np.float32(0.1)) * np.float32(10))
    assert unsigned.rate(12) == unsigned.rate(25) == float(np.float32(0.01))
    assert signed.rate(25) == pytest.approx(0.005, rel=1e-6)
