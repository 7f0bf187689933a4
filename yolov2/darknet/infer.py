"""Fast inference: batch norm folded into the convolutions, channels_last, prepacked oneDNN weights, bf16.

Reference: darknet `src/convolutional_layer.c` (`forward_convolutional_layer`: convolution, then at test
time `normalize_cpu`, `scale_bias`, `add_bias`, `activate_array`) and `src/network.c` (`fuse_conv_batchnorm`
in AlexeyAB's fork does the same folding). At inference batch norm is an affine map per output channel,
so it folds into the convolution before it (:func:`fold_batch_norm`); what is left per layer is one
convolution with a bias and an activation.

On a CPU with oneDNN the folded weights are reordered once into oneDNN's blocked layout and each layer
runs as one oneDNN primitive with the activation as a post-op (`torch.ops.mkldnn._convolution_pointwise`,
what `torch.compile` emits for a frozen model on CPU). Without that, PyTorch re-lays the weights out on
every call: for yolov2-tiny-voc that is 63 MB moved per forward, more than a third of its time at batch 1.

`precision="bf16"` stores the folded weights in bfloat16 and runs the whole body in it (what CUDA
autocast does for convolutions, without re-casting the weights per call); oneDNN then uses AMX or
AVX512-BF16 with float32 accumulation. `precision="fp16"` does the same in float16, on CUDA only
(cuDNN's tensor cores; float16's range, ±65504, holds darknet's activations, its 11-bit mantissa
makes it closer to float32 than bf16). Logits come back as float32 in every mode. Shapes: (N, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov2.darknet.layers import ACTIVATIONS, Convolutional, MaxPool, Reorg, check_input, pad_value

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The default of `detect` and `valid`: the fastest path that keeps float32's results (bf16 moves the
# logits by ~1% of their range on average, see bf16_error and BF16_TOLERANCE).
DEFAULT_PRECISION = "fp32"
# |bf16 logits - fp32 logits| / their range that tests allow, (max, mean). bf16 keeps 8 bits of mantissa
# (oneDNN accumulates in float32), so each layer adds ~0.2% noise: measured on the stock cfgs with random
# calibrated weights, max 2% / mean 0.4% for yolov2-tiny-voc, max 5-13% / mean 1.7% for yolov2-voc (23 convs)
BF16_TOLERANCE = (0.2, 0.03)
# darknet activation -> oneDNN post-op (name, scalars); leaky is `x>0 ? x : .1*x` (darknet's activate)
ONEDNN_POSTOPS: dict[str, tuple[str, list[float]]] = {
    "linear": ("none", []),
    "leaky": ("leaky_relu", [0.1]),
    "relu": ("relu", []),
    "logistic": ("sigmoid", []),
}


def onednn_available() -> bool:
    """True when PyTorch has oneDNN (mkldnn) with the fused conv + post-op kernel inductor uses."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and mkldnn is not None
            and hasattr(mkldnn, "_convolution_pointwise") and hasattr(mkldnn, "_reorder_convolution_weight"))


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """True when bf16 convolutions run natively: a CPU with AVX512-BF16 or AMX, or a CUDA GPU with bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and onednn_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fp16_supported(device: str | torch.device = "cpu") -> bool:
    """True where the fused path runs in float16: a CUDA GPU (tensor cores). CPUs have no fast float16
    convolution (oneDNN's needs AVX512-FP16/AMX-FP16): there bf16 is the reduced precision."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available()


def fold_batch_norm(layer: Convolutional) -> tuple[Tensor, Tensor]:
    """A conv layer's weight (O, I/groups, k, k) and bias (O,) with its batch norm folded in, float32.

    darknet at test time: y = γ·(conv_W(x) − μ)/√(σ² + ε) + β = conv_{W·s}(x) + (β − μ·s),
    s = γ/√(σ² + ε) per output channel. Computed in float64, rounded once.
    """
    w = layer.conv.weight.detach().double()
    if layer.bn is None:
        return w.float(), layer.conv.bias.detach().float()
    bn = layer.bn
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (O,)
    bias = bn.bias.detach().double() - bn.running_mean.double() * s
    return (w * s.view(-1, 1, 1, 1)).float(), bias.float()


class FusedConv(nn.Module):
    """One darknet conv layer at inference: folded weights, bias, activation; optionally prepacked."""

    def __init__(self, layer: Convolutional, dtype: torch.dtype, pack: bool, input_shape: tuple[int, ...]):
        super().__init__()
        w, b = fold_batch_norm(layer)
        # parameters (frozen) so `.to(device)` moves them and `next(m.parameters())` names the device
        self.weight = nn.Parameter(w.to(dtype).contiguous(memory_format=torch.channels_last), False)
        self.bias = nn.Parameter(b.to(dtype), False)
        self.stride, self.padding, self.groups = layer.stride, layer.padding, layer.groups
        self.activation, self.pack = layer.activation, pack
        self.input_shape = list(input_shape)  # (1, C, H, W) at the cfg's size: oneDNN picks a layout for it
        self._packed: Tensor | None = None  # the weight in oneDNN's blocked layout, made on first use

    def _onednn(self, x: Tensor) -> Tensor:
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, [self.padding] * 2, [self.stride] * 2, [1, 1], self.groups, self.input_shape)
        attr, scalars = ONEDNN_POSTOPS[self.activation]
        pad, stride = [self.padding] * 2, [self.stride] * 2
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, pad, stride, [1, 1],
                                                       self.groups, attr, scalars, "")

    def forward(self, x: Tensor) -> Tensor:
        if self.pack and x.device.type == "cpu" and not _exporting():
            return self._onednn(x)
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)
        return ACTIVATIONS[self.activation](x)

    def _apply(self, fn, recurse=True):
        self._packed = None  # `.to()`/`.float()` make new weights: pack those on next use
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}->{o} {k}x{k}/{self.stride} {self.activation}, {self.weight.dtype}, packed={self.pack}"


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def darknet_maxpool(layer: MaxPool, x: Tensor) -> Tensor:
    """Darknet's maxpool for any dtype: out-of-range taps are the dtype's lowest finite value (darknet's
    -FLT_MAX, which bf16 cannot hold), never 0.

    The max over the k x k strided taps (the model's `_max_of_taps`) is 3-4x faster than `F.max_pool2d`
    on yolov2-tiny's first 416x416 map in channels_last; an export traces `F.max_pool2d` (ONNX MaxPool).
    """
    _, oh, ow = layer.output_shape((0, x.shape[-2], x.shape[-1]))
    top, bottom = layer._pads(x.shape[-2], oh)
    left, right = layer._pads(x.shape[-1], ow)
    if top or bottom or left or right:  # tiny's 2x2/1 maxpool: one row and column on the bottom/right
        x = F.pad(x, (left, right, top, bottom), value=pad_value(x.dtype))
    return F.max_pool2d(x, layer.size, layer.stride) if _exporting() else layer._max_of_taps(x, oh, ow)


def space_to_depth_weight(channels: int, stride: int) -> Tensor:
    """One-hot kernels (C*s², C, s, s): output channel (dy*s + dx)*C + c copies channel c at (dy, dx)."""
    s = stride
    w = torch.zeros(s * s * channels, channels, s, s)
    for dy in range(s):
        for dx in range(s):
            w[(dy * s + dx) * channels + torch.arange(channels), torch.arange(channels), dy, dx] = 1.0
    return w


def darknet_reorg(x: Tensor, stride: int, weight: Tensor, static: bool = False) -> Tensor:
    """Darknet's reorg (`reorg_cpu`, forward=0) in 4-D ops only: (N, C, H, W) -> (N, s²C, H/s, W/s).

    darknet reads the input memory as (C/s², s·H, s·W), moves each s x s block's pixels into channels
    (channel (dy·s + dx)·C/s² + c: ONNX's SpaceToDepth order, here a stride-s convolution with one-hot
    kernels, exact), and reads the resulting (C, H, W) memory as (s²C, H/s, W/s). Unlike the 6-D permute
    of `yolov2.darknet.model.Reorg` this exports to an ONNX graph that OpenCV 4's importer reads.
    weight: `space_to_depth_weight(C/s², s)`. static: while tracing, freeze C, H, W as constants (batch
    stays -1), so the exported Reshapes need no Shape ops, which OpenCV 4 cannot follow with a dynamic batch.
    """
    _, c, h, w = (int(v) for v in x.shape) if static else x.shape
    s = stride
    x = x.contiguous().reshape(-1, c // (s * s), h * s, w * s)  # (N, C/s², sH, sW), darknet's view
    x = F.conv2d(x, weight.to(x), stride=s)  # (N, C, H, W)
    return x.reshape(-1, c * s * s, h // s, w // s)


class FusedReorg(nn.Module):
    """`[reorg]` as :func:`darknet_reorg`, its one-hot kernels a buffer (moved by `.to()`)."""

    def __init__(self, layer: Reorg, channels: int, dtype: torch.dtype):
        super().__init__()
        self.stride, self.static = layer.stride, False  # static: see darknet_reorg (set by export_onnx)
        weight = space_to_depth_weight(channels // layer.stride**2, layer.stride)
        self.register_buffer("weight", weight.to(dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return darknet_reorg(x, self.stride, self.weight, self.static)


class FusedDarknet(nn.Module):
    """A `Darknet` net for inference only: `m(x)` -> the same logits as `net(x)`, faster.

    x: (N, channels, H, W) float in [0, 1], H and W multiples of 32 -> float32 logits
    (N, A*(5+C), H/32, W/32) in NCHW. Keeps the net's `width`, `height`, `channels`, `stride`, `region`,
    `anchors`, `num_classes` and `head`, so it stands in for the net in `yolov2.detect.detector.Detector`.
    pack: prepack weights for oneDNN (default: on a CPU with oneDNN).
    """

    def __init__(self, net: nn.Module, precision: str = DEFAULT_PRECISION, pack: bool | None = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        device = net.anchors.device
        if precision == "bf16" and not bf16_supported(device):
            raise ValueError(f"precision 'bf16' needs a CPU with AVX512-BF16 or AMX and oneDNN, or a CUDA "
                             f"GPU with bf16; {device} has neither")
        if precision == "fp16" and not fp16_supported(device):
            raise ValueError(f"precision 'fp16' runs on CUDA GPUs; {device} is not one (on a CPU use fp32, "
                             f"or bf16 with AVX512-BF16 or AMX)")
        self.precision, self.dtype = precision, DTYPES[precision]
        cpu_packs = onednn_available() and device.type == "cpu" and precision != "fp16"
        self.pack = cpu_packs if pack is None else pack
        if self.pack and not onednn_available():
            raise ValueError("pack=True needs PyTorch built with oneDNN (torch.backends.mkldnn)")
        for key in ("width", "height", "channels", "stride", "region", "num_classes", "head"):
            setattr(self, key, getattr(net, key))
        self.register_buffer("anchors", net.anchors.clone(), persistent=False)  # (A, 2) grid cells
        rows = net.summary()
        body = list(net.layers[: net.head + 1])
        self.layers = nn.ModuleList(self._fused(m, rows[m.index]["input"]) for m in body)
        self.sources = [m.sources for m in body]
        self.last_use = {s: m.index for m in body for s in m.sources}  # free outputs nobody reads again
        self.to(device)  # the reorg's one-hot kernels are made on the CPU

    def _fused(self, layer: nn.Module, in_shape: tuple[int, int, int]) -> nn.Module:
        if isinstance(layer, Convolutional):
            return FusedConv(layer, self.dtype, self.pack, (1, *in_shape))
        if isinstance(layer, Reorg):
            return FusedReorg(layer, in_shape[0], self.dtype)
        return layer  # maxpool (see darknet_maxpool), route: stateless, shared with the net

    def _check(self, x: Tensor) -> None:
        if _exporting():
            return
        check_input(x, self.channels, self.stride)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> float32 head logits (N, A*(5+C), H/32, W/32)."""
        self._check(x)
        outputs = {-1: x.to(self.dtype).contiguous(memory_format=torch.channels_last)}
        for index, (layer, sources) in enumerate(zip(self.layers, self.sources, strict=True)):
            ins = [outputs[s] for s in sources]
            if isinstance(layer, MaxPool):
                out = darknet_maxpool(layer, ins[0])
            elif isinstance(layer, FusedConv):
                out = layer(ins[0])
            else:  # route's cat and reorg's permute come back in NCHW: the next conv wants channels_last
                out = layer(*ins).contiguous(memory_format=torch.channels_last)
            for s in set(sources):
                if self.last_use[s] == index:
                    del outputs[s]
            outputs[index] = out
        return outputs[self.head].float().contiguous()

    def fuse(self, precision: str | None = None, pack: bool | None = None) -> FusedDarknet:
        """Already fused: itself, so code that calls `net.fuse(...)` accepts either module."""
        if precision not in (None, self.precision) or pack not in (None, self.pack):
            raise ValueError(f"this module is fused with precision={self.precision}, pack={self.pack}; "
                             f"fuse the Darknet net for precision={precision}, pack={pack}")
        return self

    def extra_repr(self) -> str:
        return f"precision={self.precision}, pack={self.pack}"


def fuse(net: nn.Module, precision: str = DEFAULT_PRECISION, pack: bool | None = None) -> FusedDarknet:
    """`net.fuse()`: the inference module of an eval-mode `net` (batch norm uses its rolling statistics)."""
    return FusedDarknet(net, precision, pack)


def relative_error(ours: Tensor, ref: Tensor, mean: bool = False) -> float:
    """max (or mean) |ours − ref| / (max ref − min ref): how the fused, bf16 and ONNX paths agree."""
    ref = ref.detach().float()
    span = (ref.max() - ref.min()).item()
    diff = (torch.as_tensor(ours).detach().float() - ref).abs()
    return (diff.mean() if mean else diff.max()).item() / (span or 1.0)


@torch.no_grad()
def bf16_error(net: nn.Module, x: Tensor) -> tuple[float, float]:
    """How far the bf16 path's logits move from the unfused float32 net's on x: (max, mean) of
    |bf16 − fp32| relative to the fp32 logits' range."""
    ours, ref = fuse(net, "bf16")(x), net.eval()(x)
    return relative_error(ours, ref), relative_error(ours, ref, mean=True)
