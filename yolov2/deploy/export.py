"""ONNX export of a darknet YOLOv2 net (and optionally its region decode), for ONNX Runtime and OpenCV 5.

    python -m yolov2 export --cfg C --weights W --format onnx --out model.onnx [--size 416 | --dynamic-size]
                            [--with-decode] [--opset 17]

Reference: darknet `src/region_layer.c` (`get_region_box`, `get_region_detections`) for the decode.
The exported graph is the fused float32 net (`net.fuse(pack=False)`: batch norm folded, darknet's maxpool
as Pad + MaxPool), traced with PyTorch's TorchScript-based exporter (`dynamo=False`): it exports dynamic
height and width where `torch.export` rejects the maxpool's size arithmetic. Batch is always dynamic.

Input `images`: (N, 3, H, W) float32 RGB in [0, 1]. Output `logits`: (N, A*(5+C), H/32, W/32), or with
`--with-decode` `detections`: (N, A*H/32*W/32, 5+C) per slot in darknet's order (anchor, row, column):
x, y, w, h (normalised centre-size relative to the network input), objectness σ(to), then
objectness·softmax(classes) (darknet's class probabilities before `thresh`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from yolov2.darknet.cfg import CfgError
from yolov2.darknet.infer import FusedReorg, relative_error
from yolov2.darknet.model import Darknet
from yolov2.darknet.region import activate, pred_boxes, split_entries
from yolov2.darknet.weights import WeightsError
from yolov2.files import atomic_path

OPSET = 17


class RegionDecode(nn.Module):
    """Net + darknet's region decode: (N, 3, H, W) -> (N, A*H'*W', 5+C) boxes and scores per slot."""

    def __init__(self, net: nn.Module, num: int):
        super().__init__()
        self.net, self.num = net, num
        self.register_buffer("anchors", net.anchors.clone(), persistent=False)  # (A, 2) grid cells

    def forward(self, x: Tensor) -> Tensor:
        out = activate(self.net(x), self.num)  # (N, A*(5+C), H', W')
        boxes = pred_boxes(out, self.anchors).flatten(1, 3)  # (N, A*H'*W', 4) normalised centre-size
        z = split_entries(out, self.num).permute(0, 1, 3, 4, 2).flatten(1, 3)  # (N, A*H'*W', 5+C)
        obj = z[..., 4:5]
        return torch.cat((boxes, obj, obj * z[..., 5:]), dim=-1)


def export_onnx(net: Darknet, out: str | Path, size: tuple[int, int] | None = None,
                dynamic_size: bool = False, with_decode: bool = False, opset: int = OPSET) -> Path:
    """Write `net` (eval mode, float32) as ONNX to `out` and check it with `onnx.checker`.

    size: (width, height) of the traced input (default: the cfg's); with dynamic_size any multiple of 32
    works at run time. Batch is dynamic. Returns the path. The file appears only once written and
    checked (`yolov2.files.atomic_path`): a failure leaves no `out`, or the previous one.
    """
    import onnx  # optional dependency, needed only here

    w, h = size or (net.width, net.height)
    if w % net.stride or h % net.stride or w <= 0 or h <= 0:
        raise ValueError(f"size {w}x{h}: width and height must be positive multiples of {net.stride}")
    model = net.eval().fuse(pack=False)  # plain aten ops: oneDNN's prepacked kernels do not export
    for m in model.layers:
        if isinstance(m, FusedReorg):
            m.static = not dynamic_size
    if with_decode:
        model = RegionDecode(model, net.region.num)
    name = "detections" if with_decode else "logits"
    dims = {"images": {0: "N"}, name: {0: "N"}}
    if dynamic_size:
        dims["images"] |= {2: "H", 3: "W"}
        dims[name] |= {1: "slots"} if with_decode else {2: "H32", 3: "W32"}
    x = torch.rand(1, net.channels, h, w, device=net.anchors.device)
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # the legacy exporter is deprecated but is the one that exports dynamic H, W here; the maxpool pads
        # it freezes are the same at every multiple of 32 (0 for 2x2/2 on even sizes, 1 for tiny's 2x2/1)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["images"], output_names=[name],
                          dynamic_axes=dims, opset_version=opset, do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
    return out


def onnx_session(path: str | Path, threads: int = 2, spin: bool = True):
    """An ONNX Runtime CPU session with `threads` intra-op threads (one inter-op thread).

    spin=False: idle threads sleep instead of spinning (ONNX Runtime's OMP_WAIT_POLICY=PASSIVE), so they
    leave the cores to whatever runs next.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: Tensor | np.ndarray) -> np.ndarray:
    """The session's first output for a (N, 3, H, W) float32 batch."""
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    return session.run(None, {"images": np.ascontiguousarray(x, np.float32)})[0]


def verify(net: Darknet, path: str | Path, x: Tensor, with_decode: bool = False) -> float:
    """Max |ONNX Runtime − PyTorch| relative to the PyTorch output's range, on batch x."""
    with torch.no_grad():
        ref = net.eval()(x)
        if with_decode:
            ref = RegionDecode(net, net.region.num)(x)
    return relative_error(torch.from_numpy(run_onnx(onnx_session(path, 1), x)), ref)


def parse_size(text: str) -> tuple[int, int]:
    """`416` or `WxH` (`608x416`) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or WxH, e.g. 416 or 608x416") from None
    if len(parts) > 2 or min(w, h) <= 0 or w % 32 or h % 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: width and height must be positive multiples of 32")
    return w, h


OPSETS = (11, 20)  # darknet's padded maxpool needs Pad with a value input (11); the exporter's newest (20)


def _opset(text: str) -> int:
    lo, hi = OPSETS
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise argparse.ArgumentTypeError(f"expected an opset from {lo} to {hi}, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolov2 export", description="Export a darknet cfg + weights "
                                "to ONNX (fused float32 graph, dynamic batch).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m yolov2 export --cfg yolov2-tiny-synth "
                                "--weights "
                                "data/yolov2-tiny-synth.weights --out tiny-synth.onnx")
    p.add_argument("--cfg", required=True, help="darknet .cfg (path or shipped name)")
    p.add_argument("--weights", required=True, help="darknet .weights")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True, help="the .onnx file to write")
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--size", type=parse_size, help="input size N or WxH (default: the cfg's)")
    sizes.add_argument("--dynamic-size", action="store_true", help="any multiple of 32 at run time")
    p.add_argument("--with-decode", action="store_true", help="output boxes and scores per slot, not logits")
    p.add_argument("--opset", type=_opset, default=OPSET,
                   help=f"ONNX opset, {OPSETS[0]} to {OPSETS[1]} (default {OPSET})")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    return p


def missing_extra(*modules: str, extra: str = "onnx") -> str | None:
    """None when every module imports, else the one-line message naming the extra that installs them."""
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (f"this command needs {', '.join(absent)}, not installed: pip install \"yolov2[{extra}]\" "
            f"(or pip install {' '.join(absent)})")


def main(argv: list[str]) -> int:
    """`python -m yolov2 export`: write, check and verify the ONNX file."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    missing = missing_extra("onnx", "onnxscript", "onnxruntime")
    if missing:
        print(f"yolov2 export: error: {missing}", file=sys.stderr)
        return 1
    try:
        if out.exists() and not args.force:
            raise ValueError(f"{out}: exists (use --force to overwrite)")
        if not out.parent.is_dir():
            raise ValueError(f"{out.parent}: no such folder for --out")
        net = Darknet(args.cfg).eval()
        net.load_weights(args.weights)
        export_onnx(net, out, args.size, args.dynamic_size, args.with_decode, args.opset)
    except (CfgError, WeightsError, OSError, ValueError) as e:
        print(f"yolov2 export: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yolov2 export: interrupted; no half-written ONNX file was left", file=sys.stderr)
        return 130
    w, h = args.size or (net.width, net.height)
    err = verify(net, out, torch.rand(2, net.channels, h, w), args.with_decode)
    print(f"{out}: ONNX opset {args.opset}, onnx.checker passed; ONNX Runtime vs PyTorch at batch 2, "
          f"{w}x{h}: max |diff| = {err:.2g} of the output range")
    return 0
