"""A darknet `.cfg` built as a PyTorch model, layer by layer (the layers: `yolov2.darknet.layers`).

Reference: darknet `src/parser.c` (`parse_network_cfg`) and `src/network.c`. `net.layers[i]` is
darknet's layer i, so index i matches darknet's printout, its `partial` cutoffs and the golden files'
`layer_XX` keys. Shapes are (C, H, W) per image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from yolov2.darknet.cfg import CfgError, Section, load_cfg
from yolov2.darknet.infer import fuse as fuse_net
from yolov2.darknet.layers import LAYER_TYPES, Convolutional, Layer, Region, Shape, check_input
from yolov2.darknet.region import RegionConfig
from yolov2.darknet.weights import load_darknet_weights, save_darknet_weights

MAX_INPUT = 8192  # [net] width and height at most (YOLOv2 runs at 320..608)
MAX_OUTPUT = 1 << 30  # values of one layer's output for one image (4 GiB of float32)
_PROBE = 1 << 14  # an input side that every power-of-two stride divides, to find the network's stride


def _build(sections: list[Section], input_shape: Shape) -> tuple[list[Layer], list[Shape]]:
    """Darknet layers from the sections after `[net]`, with each one's output shape at `input_shape`."""
    layers: list[Layer] = []
    shapes: list[Shape] = []
    for index, sec in enumerate(sections):
        kind = LAYER_TYPES.get(sec.type)
        if kind is None:
            raise CfgError(f"{sec.path}:{sec.line}: unknown layer type [{sec.type}] "
                           f"(supported: {', '.join(f'[{k}]' for k in LAYER_TYPES)})")
        prev = shapes[-1] if shapes else input_shape
        layer = kind(index, sec, prev) if kind is Convolutional else kind(index, sec)
        layers.append(layer)
        unused = sorted(set(sec.options) - sec.used)
        if unused:  # darknet's option_unused: a typo like `batch_normalise=1` would pass silently
            warnings.warn(f"{sec.where()}: unused key(s) {', '.join(unused)}; darknet ignores them too",
                          stacklevel=3)
        shapes.append(layer.output_shape(*(shapes[s] if s >= 0 else input_shape for s in layer.sources)))
        c, h, w = shapes[-1]
        if min(c, h, w) < 1 or c * h * w > MAX_OUTPUT:
            what = "is empty" if min(c, h, w) < 1 else f"has {c * h * w:,} values, more than {MAX_OUTPUT:,}"
            raise CfgError(f"{sec.where()}: its output ({c}, {h}, {w}) at the {input_shape[2]}x"
                           f"{input_shape[1]} input {what}")
    return layers, shapes


def _stride(layers: list[Layer], head: int, channels: int) -> int | None:
    """Input pixels per output cell, from the output at a probe size (None: not a power-of-two stride)."""
    shapes: list[Shape] = []
    try:
        for layer in layers[: head + 1]:
            shapes.append(layer.output_shape(*(shapes[s] if s >= 0 else (channels, _PROBE, _PROBE)
                                               for s in layer.sources)))
    except CfgError:
        return None
    out = shapes[head][2]
    return _PROBE // out if out > 0 and _PROBE % out == 0 else None


def _check_net(net: Section) -> tuple[int, int, int]:
    """[net] width, height, channels: what this package can build and feed (errors name the key)."""
    width, height, channels = net.get_int("width", 0), net.get_int("height", 0), net.get_int("channels", 0)
    if min(width, height, channels) <= 0:
        raise CfgError(f"{net.where()}: width, height and channels must be > 0 "
                       f"(got {width}, {height}, {channels})")
    for key, v in (("width", width), ("height", height)):
        if v > MAX_INPUT:
            raise CfgError(f"{net.where(key)}: {key}={v} is above {MAX_INPUT}, the largest input this "
                           f"package builds")
    if channels != 3:
        raise CfgError(f"{net.where('channels')}: channels={channels}, but the images this package reads and "
                       f"feeds are RGB: only channels=3 is supported")
    return width, height, channels


class Darknet(nn.Module):
    """A darknet YOLOv2 cfg as an `nn.Module`; `net.layers[i]` is darknet's layer i.

    `net(x)`: x (N, channels, H, W) floats in [0, 1], RGB, H and W multiples of `net.stride` (32)
    -> the raw logits of the last conv, the region layer's input, (N, A*(5+C), H/32, W/32).
    """

    def __init__(self, cfg: str | Path | Sequence[Section]):
        super().__init__()
        self.sections = load_cfg(cfg)
        self.net_options = net = self.sections[0]
        if net.type not in ("net", "network"):
            raise CfgError(f"{net.where()}: the first section must be [net] or [network]")
        self.width, self.height, self.channels = _check_net(net)
        layers, shapes = _build(self.sections[1:], (self.channels, self.height, self.width))
        regions = [layer for layer in layers if isinstance(layer, Region)]
        if len(regions) != 1 or layers[-1] is not regions[0]:
            raise CfgError(f"{net.path}: a YOLOv2 cfg needs exactly one [region], as its last layer "
                           f"(found {len(regions)})")
        self.layers = nn.ModuleList(layers)
        self.head = layers[-1].sources[0]  # index of the last conv, whose output net(x) returns
        self.region: RegionConfig = regions[0].config
        self.num_classes = self.region.classes
        self.register_buffer("anchors", self.region.anchor_tensor, persistent=False)  # (A, 2) grid cells
        self.stride = _stride(layers, self.head, self.channels) or self.width // shapes[self.head][2]  # 32
        for key, size, cells in (("width", self.width, shapes[self.head][2]),
                                 ("height", self.height, shapes[self.head][1])):
            if size % self.stride or cells != size // self.stride:
                k = size // self.stride
                near = sorted({max(1, k) * self.stride, (k + 1) * self.stride})
                raise CfgError(f"{net.where(key)}: {key}={size} is not a multiple of {self.stride}, the "
                               f"network's stride (input pixels per output cell); use "
                               f"{' or '.join(map(str, near))}")
        self.seen = 0  # images trained on, darknet's *net->seen; kept in the .weights header
        self.header = (0, 2, 0)  # (major, minor, revision) of the last loaded .weights file
        # the last layer reading each output, so forward() frees what nobody reads any more
        self._last_use = {s: layer.index for layer in layers for s in layer.sources}

    def _check_input(self, x: Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        check_input(x, self.channels, self.stride)

    def _run(self, x: Tensor, stop: int, keep_all: bool) -> dict[int, Tensor]:
        outputs = {-1: x}
        for layer in self.layers[: stop + 1]:
            out = layer(*(outputs[s] for s in layer.sources))
            if not keep_all:
                for s in set(layer.sources):
                    if self._last_use[s] == layer.index:
                        del outputs[s]
            outputs[layer.index] = out
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> raw head logits (N, A*(5+C), H/32, W/32)."""
        self._check_input(x)
        return self._run(x, self.head, keep_all=False)[self.head]

    def forward_layers(self, x: Tensor) -> list[Tensor]:
        """Every layer's output in darknet's index order; the region entry is the activated output."""
        self._check_input(x)
        outputs = self._run(x, len(self.layers) - 1, keep_all=True)
        return [outputs[i] for i in range(len(self.layers))]

    def conv_layers(self, cutoff: int | None = None) -> list[Convolutional]:
        """The `[convolutional]` layers with index < cutoff (all of them when cutoff is None)."""
        stop = len(self.layers) if cutoff is None else cutoff
        return [m for m in self.layers[:stop] if isinstance(m, Convolutional)]

    def summary(self, height: int | None = None, width: int | None = None) -> list[dict]:
        """Darknet's layer printout as data, one dict per layer, at height x width (default: the cfg's).

        Keys: index, type, filters, size, stride, padding, detail, input and output (C, H, W), params
        (trainable parameters; BN rolling statistics are buffers and not counted)."""
        shapes: list[Shape] = []
        size_in = (self.channels, height or self.height, width or self.width)
        rows = []
        for layer in self.layers:
            ins = [shapes[s] if s >= 0 else size_in for s in layer.sources]
            shapes.append(layer.output_shape(*ins))
            row = {"index": layer.index, "type": layer.kind, "filters": None, "size": None, "stride": None,
                   "padding": None, "detail": "", "input": ins[0], "output": shapes[-1],
                   "params": sum(p.numel() for p in layer.parameters())}
            rows.append(row | layer.describe())
        return rows

    def fuse(self, precision: str = "fp32", pack: bool | None = None) -> nn.Module:
        """The inference module (`yolov2.darknet.infer.FusedDarknet`): batch norm folded,
        channels_last, oneDNN prepacked weights on CPU; precision "fp32" or "bf16". Its logits equal
        `self(x)`'s (fp32)."""
        return fuse_net(self, precision, pack)

    def load_weights(self, path: str | Path, cutoff: int | None = None) -> None:
        """Darknet's `load_weights`; with cutoff, only conv layers < cutoff (darknet's `partial`)."""
        self.header, self.seen = load_darknet_weights(self, path, cutoff)

    def save_weights(self, path: str | Path, cutoff: int | None = None) -> None:
        """Darknet's `save_weights` (header 0.2.0, 8-byte `seen`); with cutoff, only conv layers < cutoff."""
        save_darknet_weights(self, path, cutoff)
