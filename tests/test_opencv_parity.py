"""OpenCV's darknet importer, an independent implementation, reads our `.weights` and agrees with us.

OpenCV's batch norm uses eps = 1e-6 where darknet (and we) use 1e-5, so the file handed to OpenCV
carries every rolling_variance + 9e-6: both then divide by sqrt(var + 1e-5), and what is left is
float rounding, which a real mismatch exceeds (proved below).

TOL is a tolerance, not a worst case (yolov2.darknet.ulp, NET_RANGE_BOUND: no useful worst case
exists for a whole net): OpenCV's and our float32 sums, run here with AVX-512, AVX2 and SSE4.1
kernels on both sides, agree within 2.6e-6 of max|output| on these nets; the mutants below miss
by 4.5e-5 to 1.5.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES

import yolov2.darknet.layers
from yolov2 import Darknet
from yolov2.darknet.layers import Reorg, Route

FIX = FIXTURES / "net"
TOL = 1e-5  # of max|last conv|
EPS_GAP = 1e-5 - 1e-6  # darknet's BN epsilon minus OpenCV's


def realistic_net(cfg, seed: int) -> Darknet:
    """Darknet's weight init and trained-looking BN parameters (variances .4..2, some negative scales)."""
    torch.manual_seed(seed)
    net = Darknet(cfg).eval()
    with torch.no_grad():
        for conv in net.conv_layers():
            if conv.bn is None:
                conv.conv.bias.normal_(0, 0.5)
                continue
            conv.bn.bias.normal_(0, 0.1)
            conv.bn.weight.uniform_(0.5, 1.5).mul_(torch.where(torch.rand(conv.filters) < 0.1, -1.0, 1.0))
            conv.bn.running_mean.normal_(0, 0.2)
            conv.bn.running_var.uniform_(0.4, 2.0)
    return net


def opencv_last_conv(net: Darknet, x: torch.Tensor, tmp_path) -> np.ndarray:
    """The last conv's output in OpenCV, from our writer's file (variances shifted by EPS_GAP)."""
    shifted = copy.deepcopy(net)
    with torch.no_grad():
        for conv in shifted.conv_layers():
            if conv.bn is not None:
                conv.bn.running_var += EPS_GAP
    shifted.save_weights(tmp_path / "cv.weights")
    cv = cv2.dnn.readNetFromDarknet(str(net.net_options.path), str(tmp_path / "cv.weights"))
    cv.setInput(x.numpy())
    # the region layer post-processes into detections; its input is OpenCV's `conv_<index>`
    return cv.forward(f"conv_{net.head}")


def relative_error(net: Darknet, shape, tmp_path, seed: int = 1) -> float:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = net(x).numpy()
    theirs = opencv_last_conv(net, x, tmp_path)
    assert theirs.shape == ours.shape
    return float(np.abs(ours - theirs).max() / np.abs(ours).max())


@pytest.fixture(autouse=True)
def one_opencv_thread():
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(threads)


CASES = [("yolov2-tiny-voc", (1, 3, 320, 416)), ("yolov2-voc", (2, 3, 64, 96)),
         (FIX / "tiny.cfg", (1, 3, 416, 320)), (FIX / "voc.cfg", (1, 3, 320, 416))]


@pytest.mark.parametrize("cfg, shape", CASES, ids=["tiny-voc", "voc", "narrow-tiny", "narrow-voc"])
def test_last_conv_matches_opencv(tmp_path, cfg, shape):
    assert relative_error(realistic_net(cfg, seed=3), shape, tmp_path) <= TOL


def _pixel_unshuffle(self, x):
    return F.pixel_unshuffle(x, self.stride)


def _reversed_route(self, *xs):
    return torch.cat(xs[::-1], dim=1)


def _zero(dtype):
    return 0.0


def _small_eps(mp, net):
    for conv in net.conv_layers():
        if conv.bn is not None:
            mp.setattr(conv.bn, "eps", 1e-6)


# a mistake -> (cfg where it shows, how to make it); measured errors .29, 1.5, .036, 4.5e-5
MUTANTS = {
    "reorg as pixel_unshuffle": ("voc.cfg", lambda mp, net: mp.setattr(Reorg, "forward", _pixel_unshuffle)),
    "route in reverse order": ("voc.cfg", lambda mp, net: mp.setattr(Route, "forward", _reversed_route)),
    "maxpool zero padding": ("tiny.cfg", lambda mp, _: mp.setattr(yolov2.darknet.layers, "pad_value", _zero)),
    "batch norm eps 1e-6": ("tiny.cfg", _small_eps),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_tolerance_catches_real_mismatches(tmp_path, monkeypatch, mutant):
    cfg, patch = MUTANTS[mutant]
    net = realistic_net(FIX / cfg, seed=3)
    patch(monkeypatch, net)
    assert relative_error(net, (1, 3, 320, 416), tmp_path) > 2 * TOL
