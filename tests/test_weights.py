"""Darknet `.weights` in and out: darknet's own files, both header flavours, partial loads, bad files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_path

from yolov2 import Darknet
from yolov2.darknet.weights import WeightsError, darknet_floats, read_weights, write_weights

FIX = FIXTURES / "net"


def random_net(cfg, seed: int = 0) -> Darknet:
    """A fixture-cfg net with every darknet parameter random (BN statistics included)."""
    torch.manual_seed(seed)
    net = Darknet(FIX / cfg)
    with torch.no_grad():
        for conv in net.conv_layers():
            for t in conv.darknet_params().values():
                t.uniform_(0.1, 1.0)
    net.seen = 123456789012
    return net


@pytest.fixture
def tiny_file(tmp_path):
    """A tiny-structure net saved by us: (net, path)."""
    net = random_net("tiny.cfg")
    path = tmp_path / "tiny.weights"
    net.save_weights(path)
    return net, path


def darknet_file(name: str):
    return shared_path("golden", "net", name, "model.weights")


@pytest.mark.parametrize("name", ["tiny", "voc"])
def test_darknet_params_load_bit_exact(name):
    net = Darknet(FIX / f"{name}.cfg")
    net.load_weights(darknet_file(name))
    params = np.load(shared_path("golden", "net", name, "params.npz"))
    keys = [f"L{c.index:02d}_{k}" for c in net.conv_layers() for k in c.darknet_params()]
    assert sorted(keys) == sorted(params.files)
    for conv in net.conv_layers():
        for k, t in conv.darknet_params().items():
            assert np.array_equal(t.detach().numpy(), params[f"L{conv.index:02d}_{k}"], equal_nan=True)
    assert net.header == (0, 2, 0) and net.seen == {"tiny": 32013312, "voc": 12800}[name]


@pytest.mark.parametrize("name", ["tiny", "voc"])
def test_darknet_file_round_trip_is_byte_identical(tmp_path, name):
    net = Darknet(FIX / f"{name}.cfg")
    net.load_weights(darknet_file(name))
    net.save_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == darknet_file(name).read_bytes()


def test_round_trip_is_byte_identical(tiny_file, tmp_path):
    net, path = tiny_file
    data = path.read_bytes()
    # header 0.2.0 and seen as uint64, then 4 bytes per float (golden README's layout)
    assert data[:20] == np.array([0, 2, 0], "<i4").tobytes() + np.array([net.seen], "<u8").tobytes()
    assert len(data) == 20 + 4 * 420601  # net/tiny's n_float_params
    other = Darknet(FIX / "tiny.cfg")
    other.load_weights(path)
    assert other.seen == net.seen and other.header == (0, 2, 0)
    assert np.array_equal(darknet_floats(other), darknet_floats(net))
    other.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "b.weights").read_bytes() == data


def test_16_byte_header_loads_same_numbers(tiny_file, tmp_path):
    net, path = tiny_file
    header, seen, floats = read_weights(path)
    old = tmp_path / "old.weights"
    write_weights(old, (0, 1, 0), 32013312, floats)  # 0.1 header: int32 seen (pre-2017 darknet files)
    assert old.read_bytes() == np.array([0, 1, 0, 32013312], "<i4").tobytes() + path.read_bytes()[20:]
    other = Darknet(FIX / "tiny.cfg")
    other.load_weights(old)
    assert other.header == (0, 1, 0) and other.seen == 32013312
    assert np.array_equal(darknet_floats(other), floats)


@pytest.mark.parametrize("cutoff", [0, 1, 3, 9, 14, 15, 16])
def test_partial_load_loads_exactly_the_first_layers(tiny_file, cutoff):
    net, path = tiny_file
    fresh = Darknet(FIX / "tiny.cfg")
    before = {c.index: darknet_floats_of(c) for c in fresh.conv_layers()}
    fresh.load_weights(path, cutoff=cutoff)
    for conv in fresh.conv_layers():
        want = darknet_floats_of(net.layers[conv.index]) if conv.index < cutoff else before[conv.index]
        assert np.array_equal(darknet_floats_of(conv), want), conv.name


def darknet_floats_of(conv) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for t in conv.darknet_params().values()])


def test_partial_save_is_darknets_partial(tiny_file, tmp_path):
    """`darknet partial cfg weights out 13` writes the header and the conv layers before 13 only."""
    net, path = tiny_file
    net.save_weights(tmp_path / "backbone.weights", cutoff=13)
    backbone = (tmp_path / "backbone.weights").read_bytes()
    tail = sum(darknet_floats_of(c).size for c in net.conv_layers() if c.index >= 13)
    assert backbone == path.read_bytes()[: -4 * tail]
    # loading it into the full cfg needs the cutoff; the error says which one
    with pytest.raises(WeightsError, match="exactly the conv layers before layer 13: load it with cutoff=13"):
        Darknet(FIX / "tiny.cfg").load_weights(tmp_path / "backbone.weights")
    fresh = Darknet(FIX / "tiny.cfg")
    fresh.load_weights(tmp_path / "backbone.weights", cutoff=13)
    assert np.array_equal(darknet_floats(fresh, 13), darknet_floats(net, 13))


def test_too_short_and_too_long_name_file_and_counts(tiny_file, tmp_path):
    _, path = tiny_file
    data = path.read_bytes()
    short, long = tmp_path / "short.weights", tmp_path / "long.weights"
    short.write_bytes(data[:-400])
    long.write_bytes(data + bytes(8))
    net = Darknet(FIX / "tiny.cfg")
    cfg = re.escape(str(FIX / "tiny.cfg"))
    with pytest.raises(WeightsError, match=rf"{re.escape(str(short))}: the file holds 420501 floats, "
                                           rf"but 9 conv layers of {cfg} need 420601 \(too short"):
        net.load_weights(short)
    with pytest.raises(WeightsError, match=rf"{re.escape(str(long))}: the file holds 420603 floats, .* need "
                                           r"420601 \(2 floats too many: wrong cfg"):
        net.load_weights(long)
    with pytest.raises(WeightsError, match="below layer 15 of .* need 420601 .*too short"):
        net.load_weights(short, cutoff=15)
    net.load_weights(long, cutoff=15)  # a deliberate partial load may leave floats unread


def test_failed_load_leaves_the_model_unchanged(tiny_file, tmp_path):
    _, path = tiny_file
    (tmp_path / "short.weights").write_bytes(path.read_bytes()[:-4])
    net = Darknet(FIX / "tiny.cfg")
    before = darknet_floats(net)
    with pytest.raises(WeightsError):
        net.load_weights(tmp_path / "short.weights")
    assert np.array_equal(darknet_floats(net), before) and net.seen == 0


def test_wrong_cfg_for_weights(tiny_file):
    _, path = tiny_file
    with pytest.raises(WeightsError, match=r"holds 420601 floats, but 23 conv layers of .*voc\.cfg "
                                           r"need 379385"):
        Darknet(FIX / "voc.cfg").load_weights(path)


@pytest.mark.parametrize("content, what", [
    (None, "weights file not found"),
    (b"", "0 bytes, shorter than a 16-byte header"),
    (b"\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x05", "13 bytes, shorter"),
    ((FIX / "tiny.cfg").read_bytes(), "not a darknet weights file .header reads major="),
    (b"\xff\xd8\xff\xe0" + bytes(100), "not a darknet weights file .header reads major=-"),
    (np.array([0, 2, 0, 0, 0], "<i4").tobytes() + b"\x01\x02", "not a 20-byte header plus whole float32"),
    (np.array([0, 1, 0, 7], "<i4").tobytes() + b"\x01\x02", "not a 16-byte header plus whole float32"),
])
def test_not_a_weights_file(tmp_path, content, what):
    path = tmp_path / "x.weights"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=rf"{re.escape(str(path))}: .*{what}"):
        Darknet(FIX / "tiny.cfg").load_weights(path)
