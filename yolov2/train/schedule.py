"""Darknet's learning-rate policies and its SGD update, as a PyTorch optimizer.

References: darknet `src/network.c` (`get_current_batch`, `get_current_rate`, `update_network`),
`src/parser.c` (`parse_net_options`: policy keys and defaults) and `src/convolutional_layer.c`
(`update_convolutional_layer`, same formulas in `convolutional_kernels.cu`).

Darknet's batch number is `seen / (batch * subdivisions)`, read at update time, *after* the batch's
images were counted, so the first update uses batch_num = 1. The rate is a float32 computation;
:meth:`Schedule.rate` repeats it in float32 (with darknet's `pow` in double). An update runs on the
forward after which `seen / (batch/subdivisions)` is a multiple of `subdivisions` (:func:`update_due`,
darknet's `train_network_datum`): it depends on seen, not on a count of forwards.

The update, for every conv layer (`u` = `weight_updates`, which the backward fills with minus the
gradient summed over the batch's images; biases and BN scales skip the decay line):

    u += -decay*batch * w;   w += lr/batch * u;   u *= momentum

With b = -u this is `b = momentum*b + g + decay*batch*w; w -= lr/batch * b`: exactly
`torch.optim.SGD(lr=lr/batch, momentum, dampening=0, weight_decay=decay*batch)` on the summed
loss, with the weight decay on conv weights only (:func:`darknet_sgd`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from yolov2.darknet.cfg import CfgError, Section

POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid")
f32 = np.float32


@dataclass(frozen=True)
class Schedule:
    """The `[net]` keys of a learning-rate policy (darknet's `parse_net_options` defaults).

    `unsigned_steps`: pjreddie's final code (commit f6afaab, the golden data's) compares
    `int steps[i] > size_t batch_num`: C converts a negative step (tiny-voc's `-1`) to SIZE_MAX, so
    the loop returns `learning_rate` at the first step for ever and no scale ever applies. That is a
    bug: the cfg's `steps=-1,100,... scales=.1,10,...` is a 100-batch warm-up at 0.1x, written for the
    earlier `int batch_num`. The default (False) follows the cfg's meaning; True reproduces the final
    darknet bit for bit (settings `unsigned_steps`, `train --unsigned-steps`; the golden test uses it).
    """

    learning_rate: float = 0.001
    policy: str = "constant"
    burn_in: int = 0
    power: float = 4.0
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    max_batches: int = 0
    unsigned_steps: bool = False

    @classmethod
    def from_net(cls, net: Section, **overrides) -> Schedule:
        """Read the policy from a cfg's `[net]` section; `overrides` replace fields afterwards."""
        policy = net.get_str("policy", "constant")
        if policy not in POLICIES:
            raise CfgError(f"{net.where('policy')}: unsupported policy '{policy}' "
                           f"(supported: {', '.join(POLICIES)})")
        kw: dict = dict(learning_rate=net.get_float("learning_rate", 0.001), policy=policy,
                        burn_in=net.get_int("burn_in", 0), power=net.get_float("power", 4.0),
                        max_batches=net.get_int("max_batches", 0))
        if policy == "steps":
            kw["steps"], kw["scales"] = _steps_scales(net)
        if policy in ("step", "sigmoid"):
            kw["step"] = net.get_int("step", 1)
        if policy == "step":
            kw["scale"] = net.get_float("scale", 1.0)
        if policy in ("exp", "sigmoid"):
            kw["gamma"] = net.get_float("gamma", 1.0)
        kw.update(overrides)
        return cls(**kw)

    def rate(self, batch_num: int) -> float:
        """Darknet's `get_current_rate` at `batch_num` = seen // (batch*subdivisions)."""
        lr = f32(self.learning_rate)
        if batch_num < self.burn_in:
            # lr * pow((float)batch_num / burn_in, power): float division, double pow
            return float(f32(float(lr) * math.pow(float(f32(batch_num) / f32(self.burn_in)),
                                                  float(f32(self.power)))))
        return float(self._policy_rate(lr, batch_num))

    def _policy_rate(self, lr: np.float32, batch_num: int) -> np.float32:
        p = self.policy
        if p == "constant":
            return lr
        if p == "step":
            return f32(float(lr) * math.pow(float(f32(self.scale)), batch_num // self.step))
        if p == "steps":
            return self._steps_rate(lr, batch_num)
        if p == "exp":
            return f32(float(lr) * math.pow(float(f32(self.gamma)), batch_num))
        if p == "poly":
            frac = f32(1) - f32(batch_num) / f32(self.max_batches)
            return f32(float(lr) * math.pow(float(frac), float(f32(self.power))))
        # sigmoid: lr / (1 + exp(gamma*(batch_num - step)))
        return f32(float(lr) * (1.0 / (1.0 + math.exp(float(f32(self.gamma)) * (batch_num - self.step)))))

    def _steps_rate(self, lr: np.float32, batch_num: int) -> np.float32:
        rate = lr
        for step, scale in zip(self.steps, self.scales, strict=True):
            if self.unsigned_steps and step < 0:
                step = 2**64 + step  # int -> size_t conversion in the comparison
            if step > batch_num:  # the scale applies from batch_num == step on
                return rate
            rate = f32(rate * f32(scale))
        return rate


def _steps_scales(net: Section) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if not (net.has("steps") and net.has("scales")):
        raise CfgError(f"{net.where('steps')}: policy=steps needs both 'steps' and 'scales'")
    raw_steps = net.get_str("steps").split(",")
    raw_scales = net.get_str("scales").split(",")
    if len(raw_scales) < len(raw_steps):
        # darknet reads one scale per step and walks off the end of a shorter list
        raise CfgError(f"{net.where('scales')}: {len(raw_scales)} scales for {len(raw_steps)} steps")
    try:
        steps = tuple(_atoi(s) for s in raw_steps)
        scales = tuple(float(s) for s in raw_scales[: len(steps)])
    except ValueError:
        raise CfgError(f"{net.where('steps')}: steps must be integers and scales numbers, got "
                       f"'{net.get_str('steps')}' / '{net.get_str('scales')}'") from None
    return steps, scales


def _atoi(s: str) -> int:
    # darknet's atoi: a leading integer, so "1e4" reads as 1; nothing numeric is an error here
    m = re.match(r"[+-]?\d+", s)
    if not m:
        raise ValueError(s)
    return int(m.group())


# --------------------------------------------------------------------------- the update rule


def decayed(module: nn.Module, name: str) -> bool:
    """True for the parameters darknet decays: conv `weights` (not biases, not BN scales)."""
    return isinstance(module, nn.Conv2d) and name == "weight"


def darknet_sgd(model: nn.Module, momentum: float, decay: float, batch: int) -> torch.optim.SGD:
    """SGD equal to darknet's `update_convolutional_layer` for a loss *summed* over `batch` images.

    Two groups: conv weights with weight_decay = decay*batch, the rest with none. Set the rate
    each update with :func:`set_rate` (it divides by batch).
    """
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                groups[decayed(module, name)].append(p)
    # darknet's float `-decay*batch`, rounded to float32 as darknet rounds it
    params = [{"params": groups[True], "weight_decay": float(f32(decay) * f32(batch))},
              {"params": groups[False], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=0.0, momentum=momentum, dampening=0.0, nesterov=False)


def set_rate(optimizer: torch.optim.Optimizer, rate: float, batch: int = 1) -> None:
    """Set every group's lr to rate/batch (darknet's `learning_rate/batch`; batch=1 for Adam).

    A float32 division, as darknet's `a.learning_rate/a.batch` (the rates are float32 values).
    """
    for group in optimizer.param_groups:
        group["lr"] = float(f32(rate) / f32(batch))


def update_due(seen: int, minibatch: int, subdivisions: int) -> bool:
    """Darknet's `((*net->seen)/net->batch) % net->subdivisions == 0` in `train_network_datum`.

    seen already counts this forward's images (darknet adds them before the forward); minibatch is
    the images of one forward (darknet's `net->batch` = batch/subdivisions, times the ranks here).
    True on the forward that makes seen/minibatch a multiple of subdivisions: every `subdivisions`
    forwards, but after fewer the first time when the starting seen is not a multiple of the batch.
    """
    return (seen // minibatch) % subdivisions == 0
