"""Darknet cfg -> PyTorch model: every layer against darknet's own outputs and darknet's formulas."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_path

from yolov2 import Darknet
from yolov2.darknet.cfg import CfgError, parse_cfg_text, stock_cfg
from yolov2.darknet.layers import Convolutional, MaxPool, Reorg
from yolov2.darknet.region import activate
from yolov2.darknet.ulp import NET_RANGE_BOUND, assert_range, assert_ulps, layer_bound

FIX = FIXTURES / "net"
# A layer fed darknet's own input: within layer_bound's k ulps of its terms' magnitude (a worst case,
# any machine). A whole net: within NET_RANGE_BOUND of each layer's range (statistical; ulp.py).
TOL = NET_RANGE_BOUND


def assert_layer_close(ours: torch.Tensor, ref, what: str) -> None:
    ref = torch.as_tensor(np.asarray(ref))
    assert tuple(ours.shape) == tuple(ref.shape), f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert_range(ours, ref, TOL, what)


def load_params(net: Darknet, store) -> set[int]:
    """Copy `LXX_<darknet name>` arrays into the conv layers they name; return those layers' indices."""
    loaded = set()
    with torch.no_grad():
        for conv in net.conv_layers():
            for name, t in conv.darknet_params().items():
                key = f"L{conv.index:02d}_{name}"
                if key in store:
                    t.copy_(torch.from_numpy(store[key]))
                    loaded.add(conv.index)
    return loaded


def stored_layers(store) -> dict[int, torch.Tensor]:
    """darknet's `layer_XX_type` outputs by index."""
    return {int(k[6:8]): torch.from_numpy(store[k]) for k in store if k.startswith("layer_")}


def check_from_stored(net: Darknet, store) -> list[int]:
    """Run every layer whose inputs darknet's file holds (or we computed from them); compare stored ones:
    fed darknet's inputs, within the layer's bound (yolov2.darknet.ulp.layer_bound: exact for maxpool,
    route and reorg); fed one of ours, within the chain's range bound."""
    known, loaded = stored_layers(store), load_params(net, store)
    ours: dict[int, torch.Tensor] = {}
    checked = []
    for layer in net.layers[min(known) + 1: max(known) + 1]:
        if not all(s in known or s in ours for s in layer.sources):
            continue
        if isinstance(layer, Convolutional) and layer.index not in loaded:
            continue
        inputs = [known[s] if s in known else ours[s] for s in layer.sources]
        out = layer(*inputs)
        if layer.index in known and all(s in known for s in layer.sources):  # darknet's own inputs
            k, m = layer_bound(layer, *inputs)
            assert_ulps(out, known[layer.index], k, floor=m, what=f"layer {layer.name}")
        elif layer.index in known:  # downstream of a layer of ours: a chain
            assert_layer_close(out, known[layer.index], f"layer {layer.name}")
        if layer.index in known:
            checked.append(layer.index)
        else:
            ours[layer.index] = out
    return checked


@pytest.mark.parametrize("fixture, cfg, checked", [
    ("tiny_320_body", "tiny", [9, 11]),  # conv 3x3 + BN + leaky then maxpool /2; maxpool 2x2/1
    ("tiny_320_head", "tiny", [14, 15]),  # linear 1x1 conv, region activation
    ("voc_320_passthrough", "voc", [26, 27, 28]),  # 1x1 conv + BN, reorg, route -1,-4
])
@torch.no_grad()
def test_layers_match_darknet_fixtures(fixture, cfg, checked):
    net = Darknet(FIX / f"{cfg}.cfg").eval()
    assert check_from_stored(net, np.load(FIX / f"{fixture}.npz")) == checked


@pytest.mark.parametrize("name", ["tiny", "voc"])
@torch.no_grad()
def test_every_layer_matches_darknet_at_320(name):
    d = shared_path("golden", "net", name)
    net = Darknet(d / "model.cfg").eval()
    net.load_weights(d / "model.weights")
    io = np.load(d / "io_320x320.npz")
    outs = net.forward_layers(torch.from_numpy(io["input"]))
    refs = stored_layers(io)
    assert sorted(refs) == list(range(len(net.layers))) == list(range(len(outs)))
    for layer, out in zip(net.layers, outs, strict=True):
        assert_layer_close(out, refs[layer.index], f"layer {layer.name}")  # the chain: a tolerance
        if layer.index:  # the composition, exactly: each layer of the forward on its inputs' outputs
            assert torch.equal(layer(*(outs[s] for s in layer.sources)), out), layer.name
    assert_layer_close(outs[-1], io["output"], "region output")
    # each layer fed darknet's own inputs agrees too
    store = dict(io.items()) | dict(np.load(d / "params.npz").items())
    assert check_from_stored(net, store) == list(range(1, len(net.layers)))


@pytest.mark.parametrize("name", ["tiny", "voc"])
@torch.no_grad()
def test_final_output_matches_darknet_at_416(name):
    d = shared_path("golden", "net", name)
    net = Darknet(d / "model.cfg").eval()
    net.load_weights(d / "model.weights")
    final = np.load(d / "final_416x416.npz")
    logits = net(torch.from_numpy(final["input"]))
    assert_layer_close(logits, final[f"layer_{net.head:02d}_convolutional"], "last conv")
    assert_layer_close(activate(logits, net.region.num), final["output"], "region output")


@pytest.mark.parametrize("fixture, cfg", [("tiny_320_body", "tiny"), ("voc_320_passthrough", "voc")])
def test_summary_matches_darknet_layer_dims(fixture, cfg):
    meta = json.loads(str(np.load(FIX / f"{fixture}.npz")["meta_json"]))
    rows = Darknet(FIX / f"{cfg}.cfg").summary(meta["net_h"], meta["net_w"])
    assert len(rows) == len(meta["layers"])
    for row, ref in zip(rows, meta["layers"], strict=True):
        assert (row["index"], row["type"]) == (ref["index"], ref["type"])
        if ref["type"] == "region":  # darknet's resize_region_layer leaves out_w, out_h at the cfg's 13
            assert row["output"] == (ref["c"], ref["h"], ref["w"])
            assert ref["outputs"] == np.prod(row["output"])
        else:
            assert row["output"] == (ref["out_c"], ref["out_h"], ref["out_w"])
        if ref["type"] in ("convolutional", "maxpool"):
            assert row["input"] == (ref["c"], ref["h"], ref["w"])
            assert (row["size"], row["stride"], row["padding"]) == (ref["size"], ref["stride"], ref["pad"])
        if ref["type"] == "convolutional":
            assert row["filters"] == ref["filters"]
            per_filter = 2 if ref["batch_normalize"] else 1  # bias, and BN's scale
            assert row["params"] == ref["nweights"] + ref["filters"] * per_filter


def darknet_reorg(x: np.ndarray, stride: int) -> np.ndarray:
    """Oracle: darknet's reorg_cpu(input, W, H, C, N, stride, forward=0, out) index formula, loop by loop."""
    n, c, h, w = x.shape
    src, out = x.reshape(-1), np.empty(x.size, x.dtype)
    in_c = c // (stride * stride)
    for b in range(n):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    offset = k // in_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    src_index = w2 + w * stride * (h2 + h * stride * (k % in_c + in_c * b))
                    out[i + w * (j + h * (k + c * b))] = src[src_index]
    return out.reshape(n, c * stride * stride, h // stride, w // stride)


@pytest.mark.parametrize("shape, stride", [((2, 8, 6, 4), 2), ((1, 4, 2, 6), 2), ((1, 18, 6, 3), 3)])
def test_reorg_is_darknets_permutation(shape, stride):
    x = torch.randn(shape)
    layer = Reorg(0, parse_cfg_text(f"[reorg]\nstride={stride}\n")[0])
    out = layer(x)
    assert torch.equal(out, torch.from_numpy(darknet_reorg(x.numpy(), stride)))
    assert tuple(out.shape) == (shape[0], *layer.output_shape(shape[1:]))
    if stride == 2:  # the golden README's warning: it is not pixel_unshuffle
        assert not torch.equal(out, torch.nn.functional.pixel_unshuffle(x, 2))


def darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """Oracle: darknet's forward_maxpool_layer, taps outside the input count as -FLT_MAX."""
    n, c, h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)  # C's -pad/2 for pad >= 0
    out = np.full((n, c, oh, ow), -np.finfo(np.float32).max, np.float32)
    for i in range(oh):
        for j in range(ow):
            for dn in range(size):
                for dm in range(size):
                    r, col = off + i * stride + dn, off + j * stride + dm
                    if 0 <= r < h and 0 <= col < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, r, col])
    return out


@pytest.mark.parametrize("size, stride, padding, h, w", [
    (2, 2, None, 6, 8), (2, 1, None, 5, 7), (2, 2, None, 7, 5), (3, 2, None, 7, 6),
    (3, 1, None, 5, 5), (3, 2, 0, 7, 7), (5, 3, 4, 8, 9), (2, 1, 3, 4, 4),
])
def test_maxpool_matches_darknet_padding(size, stride, padding, h, w):
    text = f"[maxpool]\nsize={size}\nstride={stride}\n" + ("" if padding is None else f"padding={padding}\n")
    layer = MaxPool(0, parse_cfg_text(text)[0])
    x = -torch.rand(2, 3, h, w) - 0.5  # all negative: zero padding would win every border window
    ref = torch.from_numpy(darknet_maxpool(x.numpy(), size, stride, size - 1 if padding is None else padding))
    out = layer(x)
    assert torch.equal(out, ref)
    assert torch.equal(layer(x.requires_grad_()), ref)  # the training path (max_pool2d) agrees
    assert tuple(out.shape[1:]) == layer.output_shape((3, h, w))


def test_maxpool_delta_goes_to_first_maximal_tap():
    """darknet's backward_maxpool_layer adds each delta at l.indexes: the first strictly larger tap."""
    layer = MaxPool(0, parse_cfg_text("[maxpool]\nsize=2\nstride=2\n")[0])
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)  # every tap ties
    layer(x).sum().backward()
    want = torch.zeros(4, 4)
    want[0::2, 0::2] = 1
    assert torch.equal(x.grad[0, 0], want)


def test_size2_stride1_maxpool_keeps_13x13():
    rows = Darknet("yolov2-tiny-voc").summary()
    assert rows[11]["type"] == "maxpool" and rows[11]["input"] == rows[11]["output"] == (512, 13, 13)


def test_batchnorm_running_stats_follow_darknet():
    """darknet: rolling = .99*rolling + .01*batch stat; batch variance divides by N*H*W - 1 (variance_cpu)."""
    sec = parse_cfg_text("[convolutional]\nbatch_normalize=1\nfilters=4\nsize=1\n")[0]
    conv = Convolutional(0, sec, (3, 5, 5))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        pre = conv.conv(x).double()
    conv.train()(x)
    mean = pre.mean(dim=(0, 2, 3))
    var = ((pre - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / (2 * 5 * 5 - 1)
    torch.testing.assert_close(conv.bn.running_mean.double(), 0.01 * mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(conv.bn.running_var.double(), 0.99 + 0.01 * var, rtol=1e-5, atol=1e-7)
    assert conv.bn.eps == 1e-5


@pytest.fixture(scope="module")
def stock_nets():
    torch.manual_seed(0)
    return {name: Darknet(name).eval() for name in ("yolov2-tiny-voc", "yolov2-voc", "yolov2-tiny-synth")}


@pytest.mark.parametrize("name, classes", [("yolov2-tiny-voc", 20), ("yolov2-voc", 20),
                                           ("yolov2-tiny-synth", 5)])
@pytest.mark.parametrize("h, w", [(320, 416), (416, 320), (64, 96)])
@torch.no_grad()
def test_non_square_shapes(stock_nets, name, classes, h, w):
    net = stock_nets[name]
    assert net.num_classes == classes and tuple(net.anchors.shape) == (5, 2)
    out = net(torch.rand(1, 3, h, w))
    assert tuple(out.shape) == (1, 5 * (5 + classes), h // 32, w // 32)
    assert net.summary(h, w)[-1]["output"] == tuple(out.shape[1:])


@torch.no_grad()
def test_forward_is_last_conv_and_layers_end_in_region():
    torch.manual_seed(0)
    net = Darknet(FIX / "voc.cfg").eval()
    x = torch.rand(2, 3, 96, 64)
    outs = net.forward_layers(x)
    assert len(outs) == len(net.layers) == 32 and net.head == 30
    assert torch.equal(net(x), outs[net.head])
    assert torch.equal(outs[-1], activate(outs[net.head], 5))
    assert torch.equal(outs[25], outs[16])  # route -9
    assert torch.equal(outs[28], torch.cat((outs[27], outs[24]), 1))  # route -1,-4, in listed order


def test_attributes_and_layer_names(stock_nets):
    net = stock_nets["yolov2-voc"]
    assert net.net_options.path == str(stock_cfg("yolov2-voc"))
    assert (net.width, net.height, net.channels, net.stride) == (416, 416, 3, 32)
    assert (net.seen, net.header) == (0, (0, 2, 0))
    assert net.net_options.type == "net" and len(net.sections) == 33
    assert net.anchors.dtype == torch.float32 and net.anchors[0].tolist() == pytest.approx([1.3221, 1.73145])
    names = ["0_convolutional", "25_route", "27_reorg", "31_region"]
    assert [net.layers[i].name for i in (0, 25, 27, 31)] == names
    assert "27_reorg: /2" in repr(net)
    tiny = stock_nets["yolov2-tiny-voc"]
    assert Darknet(tiny.sections).summary() == tiny.summary()


@pytest.mark.parametrize("shape, what", [((1, 1, 64, 64), r"expected a \(N, 3, H, W\)"),
                                         ((1, 3, 64, 80), "multiples of 32")])
def test_bad_input_shapes(shape, what):
    with pytest.raises(ValueError, match=what):
        Darknet("yolov2-tiny-synth")(torch.zeros(shape))


TINY = (FIX / "tiny.cfg").read_text()
VOC = (FIX / "voc.cfg").read_text()


@pytest.mark.parametrize("text, what", [
    (TINY.replace("[maxpool]\nsize=2\nstride=1", "[shortcut]\nfrom=-3"),
     r"x\.cfg:\d+: unknown layer type \[shortcut\]"),
    (VOC.replace("layers=-9", "layers=-40"), r"route to missing layer\(s\) \[-40\]"),
    (VOC.replace("layers=-1,-4", "layers=-1,29"), r"route to missing layer\(s\) \[29\]"),
    (VOC.replace("layers=-1,-4", "layers=-1,-12"), "route of layers .* with different sizes"),
    (TINY.replace("filters=125", "filters=120"), r"has 120 filters, but num=5 anchors \* .* = 125"),
    (TINY.split("[region]")[0], "exactly one \\[region\\], as its last layer"),
    (TINY + "\n[maxpool]\n", "exactly one \\[region\\], as its last layer"),
    (TINY.replace("[net]", "[netz]"), r"the first section must be \[net\]"),
    (TINY.replace("width=416", "width=0"), "width, height and channels must be > 0"),
    (TINY.replace("activation=linear", "activation=mish"), "activation 'mish' is not supported"),
    (VOC.replace("filters=8\nactivation=leaky\n\n[reorg]", "filters=6\nactivation=leaky\n\n[reorg]"),
     "reorg stride 2 needs channels divisible by 4"),
])
def test_inconsistent_cfgs_are_clear_errors(tmp_path, text, what):
    path = tmp_path / "x.cfg"
    path.write_text(text)
    with pytest.raises(CfgError, match=what) as err:
        Darknet(path)
    assert str(path) in str(err.value)


def test_unknown_layer_names_file_line_and_type(tmp_path):
    path = tmp_path / "y.cfg"
    path.write_text(TINY.replace("[maxpool]\nsize=2\nstride=1", "[upsample]\nstride=2", 1))
    line = path.read_text().splitlines().index("[upsample]") + 1
    with pytest.raises(CfgError, match=rf"y\.cfg:{line}: unknown layer type \[upsample\]"):
        Darknet(path)


def test_unused_keys_warn_like_darknet(tmp_path):
    path = tmp_path / "typo.cfg"
    path.write_text(TINY.replace("batch_normalize=1\nfilters=4", "batch_normalise=1\nfilters=4"))
    what = r"typo\.cfg: \[convolutional\] at line \d+: unused key\(s\) batch_normalise"
    with pytest.warns(UserWarning, match=what):
        Darknet(path)


@pytest.mark.parametrize("cfg", ["yolov2-tiny-voc", "yolov2-voc", "yolov2-tiny-synth", FIX / "tiny.cfg"])
def test_stock_cfgs_build_without_warnings(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Darknet(cfg)


def test_missing_cfg_is_clear_error():
    with pytest.raises(CfgError, match="no-such.cfg: cfg file not found"):
        Darknet("no-such.cfg")
