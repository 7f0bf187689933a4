"""Darknet's YOLOv2 layers as PyTorch modules, numerically darknet's: conv (+ batch norm, activation),
maxpool with darknet's padding, route, reorg, region.

Reference: darknet `src/convolutional_layer.c`, `src/maxpool_layer.c` (`forward_maxpool_layer`),
`src/route_layer.c`, `src/reorg_layer.c` with `src/blas.c` (`reorg_cpu`), `src/region_layer.c`, and
`src/parser.c` for each section's keys and defaults. Shapes are (C, H, W) per image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov2.darknet.cfg import CfgError, Section
from yolov2.darknet.region import RegionConfig, activate

Shape = tuple[int, int, int]  # (C, H, W)
FLT_MAX = torch.finfo(torch.float32).max
# What a cfg may ask of one layer. Darknet has no bounds; past these a cfg is a typo or an attack that
# would allocate terabytes or loop for hours (a 1000x1000 maxpool is a million taps). YOLOv2's cfgs use
# sizes 1..3, strides 1..2, paddings 0..1 and at most 11.8M weights in a layer.
MAX_KERNEL = 64  # conv and maxpool `size`, `stride` and `padding`
MAX_WEIGHTS = 1 << 28  # weights of one conv layer (1 GiB of float32)


def _bounded(section: Section, **values: int) -> None:
    """Each `key=value` of a layer within 0..MAX_KERNEL, else a CfgError naming file, line and key."""
    for key, v in values.items():
        if v > MAX_KERNEL:
            raise CfgError(f"{section.where(key)}: {key}={v} is above {MAX_KERNEL}, the largest this package "
                           f"builds (YOLOv2 uses 1 to 3)")

# darknet's activate(): leaky is `x>0 ? x : .1*x`; darknet's default activation is logistic.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "relu": F.relu,
    "logistic": torch.sigmoid,
}


class Layer(nn.Module):
    """One darknet layer: its cfg section, its index, and the indices of the outputs it reads."""

    kind = "layer"

    def __init__(self, index: int, section: Section):
        super().__init__()
        self.index = index
        self.section = section
        self.sources: tuple[int, ...] = (index - 1,)  # -1 is the network input

    @property
    def name(self) -> str:
        """Darknet-style key, e.g. `27_reorg`."""
        return f"{self.index}_{self.kind}"

    def output_shape(self, *shapes: Shape) -> Shape:
        raise NotImplementedError

    def describe(self) -> dict:
        """The summary-table fields this layer fills (filters, size, stride, detail)."""
        return {}


class Convolutional(Layer):
    """`[convolutional]`: conv, optional batch norm (darknet's GPU formula), activation."""

    kind = "convolutional"

    def __init__(self, index: int, section: Section, in_shape: Shape):
        super().__init__(index, section)
        s = section
        self.filters, self.size = s.get_int("filters", 1), s.get_int("size", 1)
        self.stride, self.groups = s.get_int("stride", 1), s.get_int("groups", 1)
        # darknet: pad=1 overrides `padding` with size/2, so a 1x1 conv with pad=1 has padding 0
        self.padding = self.size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
        self.batch_normalize = bool(s.get_int("batch_normalize", 0))
        self.activation = s.get_str("activation", "logistic")
        if self.activation not in ACTIVATIONS:
            raise CfgError(f"{s.where('activation')}: activation '{self.activation}' is not supported "
                           f"(supported: {', '.join(ACTIVATIONS)})")
        c = in_shape[0]
        if min(self.filters, self.size, self.stride, self.groups) < 1 or c % self.groups or self.padding < 0:
            raise CfgError(f"{s.where()}: bad convolution (filters={self.filters}, size={self.size}, "
                           f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                           f"input channels={c})")
        _bounded(s, size=self.size, stride=self.stride, padding=self.padding)
        weights = self.filters * (c // self.groups) * self.size * self.size
        if weights > MAX_WEIGHTS:
            raise CfgError(f"{s.where('filters')}: filters={self.filters} with size={self.size} on {c} input "
                           f"channels makes {weights:,} weights; at most {MAX_WEIGHTS:,} per layer")
        self.conv = nn.Conv2d(c, self.filters, self.size, self.stride, self.padding,
                              groups=self.groups, bias=not self.batch_normalize)
        # eps: darknet's GPU normalize; momentum .01: rolling = .99*rolling + .01*batch statistic.
        # Training normalises by the biased batch variance where darknet divides by N*H*W - 1
        # (variance_cpu): a factor sqrt(1 - 1/(N*H*W)), under 0.3% even for one 13x13 image.
        self.bn = nn.BatchNorm2d(self.filters, eps=1e-5, momentum=0.01) if self.batch_normalize else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Darknet's initialisation: weights scale*N(0,1) with scale = sqrt(2/fan_in), biases 0."""
        fan_in = self.conv.in_channels // self.groups * self.size * self.size
        with torch.no_grad():
            self.conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            if self.conv.bias is not None:
                self.conv.bias.zero_()
        if self.bn is not None:
            # darknet starts rolling_variance at 0; 1 keeps an untrained net's eval output finite
            self.bn.reset_parameters()

    def darknet_params(self) -> dict[str, Tensor]:
        """Darknet's names -> tensors, in `.weights` file order: biases, [scales, rolling_mean,
        rolling_variance,] weights (OIHW)."""
        if self.bn is None:
            return {"biases": self.conv.bias, "weights": self.conv.weight}
        return {"biases": self.bn.bias, "scales": self.bn.weight, "rolling_mean": self.bn.running_mean,
                "rolling_variance": self.bn.running_var, "weights": self.conv.weight}

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return ACTIVATIONS[self.activation](x)

    def output_shape(self, shape: Shape) -> Shape:
        _, h, w = shape
        k, s, p = self.size, self.stride, self.padding
        return self.filters, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def describe(self) -> dict:
        bn = ", bn" if self.batch_normalize else ""
        return {"filters": self.filters, "size": self.size, "stride": self.stride, "padding": self.padding,
                "detail": f"{self.activation}{bn}"}

    def extra_repr(self) -> str:
        return f"{self.name}: {self.filters} {self.size}x{self.size}/{self.stride} {self.activation}"


class MaxPool(Layer):
    """`[maxpool]` with darknet's padding: out-of-range taps count as -FLT_MAX, never as 0.

    Under autocast (bf16, fp16) the pad is the most negative value of the tensor's dtype, which
    every real tap is at least; in float32 that is -FLT_MAX, darknet's value, bit for bit."""

    kind = "maxpool"

    def __init__(self, index: int, section: Section):
        super().__init__(index, section)
        self.stride = section.get_int("stride", 1)
        self.size = section.get_int("size", self.stride)
        self.padding = section.get_int("padding", self.size - 1)  # darknet's default: size-1
        if self.size < 1 or self.stride < 1 or self.padding < 0:
            raise CfgError(f"{section.where()}: bad maxpool (size={self.size}, stride={self.stride}, "
                           f"padding={self.padding})")
        _bounded(section, size=self.size, stride=self.stride, padding=self.padding)

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        p, k, s = self.padding, self.size, self.stride
        return c, (h + p - k) // s + 1, (w + p - k) // s + 1

    def _pads(self, n: int, out: int) -> tuple[int, int]:
        # darknet's window r starts at -padding/2 + r*stride; pad after so the last window fits
        before = self.padding // 2
        return before, max(0, (out - 1) * self.stride + self.size - before - n)

    def forward(self, x: Tensor) -> Tensor:
        _, oh, ow = self.output_shape((0, x.shape[-2], x.shape[-1]))
        top, bottom = self._pads(x.shape[-2], oh)
        left, right = self._pads(x.shape[-1], ow)
        if top or bottom or left or right:
            # size 2 stride 1 (tiny layer 11): pad right/bottom by 1 with -FLT_MAX, so 13x13 stays 13x13
            # (-FLT_MAX overflows bf16 and fp16: their own lowest value plays its part there)
            x = F.pad(x, (left, right, top, bottom), value=pad_value(x.dtype))
        if torch.is_grad_enabled() and x.requires_grad:
            # its backward sends each delta to the first maximal tap, like darknet's l.indexes
            return F.max_pool2d(x, self.size, self.stride)
        return self._max_of_taps(x, oh, ow)  # the same values, several times faster on CPU

    def _max_of_taps(self, x: Tensor, oh: int, ow: int) -> Tensor:
        """Darknet's loop, vectorised: output (i, j) = max over taps (n, m) of x[i*stride+n, j*stride+m]."""
        s, out = self.stride, None
        for n in range(self.size):
            for m in range(self.size):
                tap = x[:, :, n: n + s * (oh - 1) + 1: s, m: m + s * (ow - 1) + 1: s]  # (N, C, oh, ow)
                out = tap if out is None else torch.maximum(out, tap)
        return out

    def describe(self) -> dict:
        return {"size": self.size, "stride": self.stride, "padding": self.padding}

    def extra_repr(self) -> str:
        return f"{self.name}: {self.size}x{self.size}/{self.stride}"


def pad_value(dtype: torch.dtype) -> float:
    """The maxpool's out-of-range tap in `dtype`: its most negative finite value (float32: -FLT_MAX)."""
    return torch.finfo(dtype).min


class Route(Layer):
    """`[route]`: the listed layers' outputs concatenated along channels, in the listed order."""

    kind = "route"

    def __init__(self, index: int, section: Section):
        super().__init__(index, section)
        listed = section.get_list("layers", int)
        absolute = tuple(i + index if i < 0 else i for i in listed)  # negative: relative to this layer
        bad = [i for i, a in zip(listed, absolute, strict=True) if not 0 <= a < index]
        if not listed or bad:
            raise CfgError(f"{section.where('layers')}: route to missing layer(s) {bad or listed} "
                           f"(layer {index} can read layers 0..{index - 1})")
        self.sources = absolute

    def forward(self, *xs: Tensor) -> Tensor:
        # under autocast every input is the autocast dtype; cat promotes a mixed list to the widest
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)

    def output_shape(self, *shapes: Shape) -> Shape:
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise CfgError(f"{self.section.where('layers')}: route of layers {list(self.sources)} with "
                           f"different sizes {[list(s) for s in shapes]}")
        return sum(s[0] for s in shapes), shapes[0][1], shapes[0][2]

    def describe(self) -> dict:
        return {"detail": " ".join(str(i) for i in self.sources)}

    def extra_repr(self) -> str:
        return f"{self.name}: {' '.join(str(i) for i in self.sources)}"


class Reorg(Layer):
    """`[reorg]`: darknet's `reorg_cpu(..., forward=0)` permutation (not `pixel_unshuffle`)."""

    kind = "reorg"

    def __init__(self, index: int, section: Section):
        super().__init__(index, section)
        self.stride = section.get_int("stride", 1)
        for key in ("reverse", "flatten", "extra"):
            if section.get_int(key, 0):
                raise CfgError(f"{section.where(key)}: reorg with {key}=1 is not supported")
        if self.stride < 1:
            raise CfgError(f"{section.where('stride')}: stride must be >= 1")

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = self.stride
        # darknet reads the input memory as X' (C/s², s·H, s·W) with row s·j+dy, column s·i+dx ...
        x = x.reshape(n, c // (s * s), h, s, w, s)  # (N, C/s², H, dy, W, dx)
        # ... writes O'[(dy·s+dx)·C/s² + c2, j, i] = X'[c2, s·j+dy, s·i+dx] as a (C, H, W) block ...
        x = x.permute(0, 3, 5, 1, 2, 4)  # (N, dy, dx, C/s², H, W)
        # ... and that memory, read with the output's dims, is the (s²·C, H/s, W/s) result
        return x.reshape(n, c * s * s, h // s, w // s)

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        s = self.stride
        if c % (s * s) or h % s or w % s:
            raise CfgError(f"{self.section.where()}: reorg stride {s} needs channels divisible by {s * s} "
                           f"and height, width divisible by {s}; input is {list(shape)}")
        return c * s * s, h // s, w // s

    def describe(self) -> dict:
        return {"stride": self.stride}

    def extra_repr(self) -> str:
        return f"{self.name}: /{self.stride}"


class Region(Layer):
    """`[region]`: the head's configuration; its forward is darknet's inference activation."""

    kind = "region"

    def __init__(self, index: int, section: Section):
        super().__init__(index, section)
        self.config = RegionConfig.from_section(section)

    def forward(self, x: Tensor) -> Tensor:
        return activate(x, self.config.num)

    def output_shape(self, shape: Shape) -> Shape:
        if shape[0] != self.config.channels:
            cfg = self.config
            raise CfgError(f"{self.section.where()}: the layer before [region] has {shape[0]} filters, but "
                           f"num={cfg.num} anchors * (coords {cfg.coords} + 1 + classes {cfg.classes}) "
                           f"= {cfg.channels}")
        return shape

    def extra_repr(self) -> str:
        return f"{self.name}: num={self.config.num} classes={self.config.classes}"


# darknet's string_to_layer_type accepts both spellings
LAYER_TYPES = {"convolutional": Convolutional, "conv": Convolutional, "maxpool": MaxPool, "max": MaxPool,
               "route": Route, "reorg": Reorg, "region": Region}


def check_input(x: Tensor, channels: int, stride: int) -> None:
    """Raise a clear error unless x is an (N, channels, H, W) batch with H and W multiples of stride."""
    if not isinstance(x, Tensor):
        raise TypeError(f"Darknet takes an (N, {channels}, H, W) float tensor, got {type(x).__name__}; "
                        "for image files or (H, W, 3) RGB arrays use yolov2.Detector.load(cfg, weights)")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"expected a (N, {channels}, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[2] % stride or x.shape[3] % stride:
        raise ValueError(f"input height and width must be multiples of {stride}, "
                         f"got {x.shape[2]}x{x.shape[3]}")
