"""The fused inference path (`net.fuse()`) against the plain model, darknet and PyTorch's own folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_path
from torch.nn.utils.fusion import fuse_conv_bn_weights

from yolov2 import Darknet
from yolov2.darknet.cfg import parse_cfg_text
from yolov2.darknet.infer import (
    BF16_TOLERANCE,
    FusedDarknet,
    bf16_error,
    bf16_supported,
    darknet_maxpool,
    darknet_reorg,
    fold_batch_norm,
    fp16_supported,
    onednn_available,
    relative_error,
    space_to_depth_weight,
)
from yolov2.darknet.layers import MaxPool, Reorg
from yolov2.deploy.bench import random_darknet

TOL = 1e-4  # the issue's bound: max |fused - plain| <= 1e-4 of the plain logits' range
# float16 keeps 11 bits of mantissa (bf16 8): max |fp16 - fp32| relative to the range, with headroom
FP16_TOLERANCE = 0.02
PACKS = [pytest.param(True, id="onednn", marks=pytest.mark.skipif(not onednn_available(),
                                                                     reason="PyTorch without oneDNN")),
         pytest.param(False, id="aten")]
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="CPU without AVX512-BF16/AMX")

# every activation darknet's YOLOv2 cfgs use or allow, with and without batch norm, darknet's 2x2/1
# maxpool, a reorg and a two-way route (the passthrough)
SMALL_CFG = """
[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=16
size=3
stride=1
pad=1
activation=relu
[maxpool]
size=2
stride=1
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=32
size=1
stride=1
pad=1
activation=logistic
[route]
layers=-3
[reorg]
stride=2
[route]
layers=-1,-3
[convolutional]
filters=12
size=3
stride=2
pad=1
activation=linear
[region]
anchors=1,1,2,2
classes=1
num=2
"""


@pytest.fixture(scope="module")
def nets() -> dict[str, Darknet]:
    small = random_darknet(parse_cfg_text(SMALL_CFG), seed=3, calibrate=96)
    return {"yolov2-tiny-voc": random_darknet("yolov2-tiny-voc", calibrate=96),
            "yolov2-voc": random_darknet("yolov2-voc", calibrate=96), "small": small}


@pytest.mark.parametrize("pack", PACKS)
@pytest.mark.parametrize("name", ["yolov2-tiny-voc", "yolov2-voc", "small"])
def test_fused_logits_equal_plain(nets, name, pack):
    net = nets[name]
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))  # non-square
    with torch.no_grad():
        ref = net(x)
        out = net.fuse(pack=pack)(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
    assert relative_error(out, ref) <= TOL


def test_random_weights_are_realistic(nets):
    """The nets above exercise negative scales and variances where batch norm's eps matters."""
    bns = [m.bn for m in nets["yolov2-voc"].conv_layers() if m.bn is not None]
    scales = torch.cat([bn.weight for bn in bns])
    variances = torch.cat([bn.running_var for bn in bns])
    assert (scales < 0).float().mean() > 0.05 and (variances < 1e-5).sum() > 100


@pytest.mark.parametrize("pack", PACKS)
@pytest.mark.parametrize("name", ["tiny", "voc"])
def test_fused_matches_darknet_at_416(name, pack):
    d = shared_path("golden", "net", name)
    net = Darknet(d / "model.cfg").eval()
    net.load_weights(d / "model.weights")
    final = np.load(d / "final_416x416.npz")
    ref = torch.from_numpy(final[f"layer_{net.head:02d}_convolutional"])
    out = net.fuse(pack=pack)(torch.from_numpy(final["input"]))
    assert (out - ref).abs().max() <= 2e-5 * ref.abs().max()  # test_model's bound for the plain net


def test_fold_batch_norm_equals_pytorch_folding(nets):
    for layer in nets["small"].conv_layers():
        w, b = fold_batch_norm(layer)
        if layer.bn is None:
            ref_w, ref_b = layer.conv.weight, layer.conv.bias
        else:
            bn = layer.bn
            ref_w, ref_b = fuse_conv_bn_weights(layer.conv.weight, None, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
        torch.testing.assert_close(w, ref_w.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b, ref_b.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reorg_in_4d_ops_is_darknets_permutation(dtype, static):
    layer = Reorg(0, parse_cfg_text("[reorg]\nstride=2")[0])
    x = torch.randn(2, 64, 6, 10).to(dtype)
    out = darknet_reorg(x, 2, space_to_depth_weight(16, 2).to(dtype), static)
    assert torch.equal(out, layer(x))  # one-hot kernels: exact, also in bf16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_maxpool_pads_with_lowest_value_not_zero(dtype):
    layer = MaxPool(0, parse_cfg_text("[maxpool]\nsize=2\nstride=1")[0])
    x = -torch.rand(1, 3, 5, 7).to(dtype) - 1  # all negative: a zero pad would show on the border
    out = darknet_maxpool(layer, x.contiguous(memory_format=torch.channels_last))
    assert out.dtype == dtype and torch.equal(out.float(), layer(x.float()))


@needs_bf16
@pytest.mark.parametrize("pack", PACKS)
@pytest.mark.parametrize("name", ["yolov2-tiny-voc", "yolov2-voc", "small"])
def test_bf16_is_close_but_not_float32(nets, name, pack):
    net = nets[name]
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    fused = net.fuse("bf16", pack=pack)
    assert all(p.dtype == torch.bfloat16 for p in fused.parameters())
    with torch.no_grad():
        out, ref = fused(x), net(x)
    worst, mean = relative_error(out, ref), relative_error(out, ref, mean=True)
    assert 1e-4 < mean <= BF16_TOLERANCE[1] and worst <= BF16_TOLERANCE[0]  # bf16 must move, a little


@needs_bf16
def test_bf16_error_helper(nets):
    worst, mean = bf16_error(nets["small"], torch.rand(1, 3, 64, 64))
    assert 0 < mean <= worst <= BF16_TOLERANCE[0] and mean <= BF16_TOLERANCE[1]


def test_fused_stands_in_for_the_net(nets):
    net = nets["small"]
    fused = net.fuse()
    assert isinstance(fused, FusedDarknet) and fused.precision == "fp32"
    for key in ("width", "height", "channels", "stride", "num_classes", "head"):
        assert getattr(fused, key) == getattr(net, key)
    assert torch.equal(fused.anchors, net.anchors) and next(fused.parameters()).device.type == "cpu"
    x = torch.rand(1, 3, 64, 64)
    first = fused(x)
    fused.to("cpu")  # re-applied weights are packed again on next use
    assert torch.equal(fused(x), first)


def test_errors(nets, monkeypatch):
    net = nets["small"]
    with pytest.raises(ValueError, match="precision 'fp8' is not one of fp32, bf16, fp16"):
        net.fuse("fp8")
    with pytest.raises(ValueError, match="precision 'fp16' runs on CUDA GPUs; cpu is not one"):
        net.fuse("fp16")
    with pytest.raises(ValueError, match=r"expected a \(N, 3, H, W\) batch"):
        net.fuse()(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8, got 64x50"):
        net.fuse()(torch.rand(1, 3, 64, 50))
    monkeypatch.setattr("yolov2.darknet.infer.bf16_supported", lambda device="cpu": False)
    with pytest.raises(ValueError, match="'bf16' needs a CPU with AVX512-BF16 or AMX"):
        net.fuse("bf16")


def test_fixture_cfgs_fuse(tmp_path):
    """The golden nets' cfgs (narrow widths, every stock layer) run fused at a non-default size."""
    for cfg in ("tiny", "voc"):
        net = random_darknet(FIXTURES / "net" / f"{cfg}.cfg", calibrate=96)
        x = torch.rand(1, 3, 96, 64)
        with torch.no_grad():
            assert relative_error(net.fuse()(x), net(x)) <= TOL


def test_fusing_twice_is_a_no_op_or_an_error(nets):
    fused = nets["small"].fuse()
    assert fused.fuse() is fused and fused.fuse("fp32") is fused
    with pytest.raises(ValueError, match="fused with precision=fp32"):
        fused.fuse("bf16")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_fused_on_device(nets, device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 here
    net = Darknet(parse_cfg_text(SMALL_CFG))
    net.load_state_dict(nets["small"].state_dict())
    net = net.eval().to(device)
    x = torch.rand(2, 3, 64, 96, device=device)
    with torch.no_grad():
        ref = net(x)
        fused = net.fuse()
        assert all(t.device.type == device for t in [*fused.parameters(), *fused.buffers()])
        assert relative_error(fused(x), ref) <= TOL
        if bf16_supported(device):
            assert relative_error(net.fuse("bf16")(x), ref, mean=True) <= BF16_TOLERANCE[1]
        if fp16_supported(device):
            assert relative_error(net.fuse("fp16")(x), ref) <= FP16_TOLERANCE


@pytest.mark.parametrize("name", ["yolov2-tiny-voc", "small"])
def test_fp16_dtype_logic_on_a_cpu_stand_in(nets, name, monkeypatch):
    """fp16 is for CUDA; here the CPU runs the same module (unpacked ATen float16 convolutions) so the
    dtype logic is tested without a GPU: float16 weights, reorg kernels and maxpool pads, float32 logits."""
    monkeypatch.setattr("yolov2.darknet.infer.fp16_supported", lambda device="cpu": True)
    net = nets[name]
    fused = net.fuse("fp16")
    assert fused.precision == "fp16" and not fused.pack  # oneDNN's packing is for fp32/bf16 only
    assert all(p.dtype == torch.float16 for p in fused.parameters())
    assert all(b.dtype == torch.float16 for n, b in fused.named_buffers() if n.endswith("weight"))
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, ref = fused(x), net(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
    assert 0 < relative_error(out, ref) <= FP16_TOLERANCE  # float16 moves the logits, by less than bf16
