"""Inference benchmark against OpenCV's DNN on the same darknet weights: `python -m yolov2 bench`.

    python -m yolov2 bench [--json OUT] [--repeats N] [--models tiny,voc] [--batches 1,8] [--size 416]

Paths, all on the same random weights written to a temporary `.weights` file: `opencv`
(`cv2.dnn.readNetFromDarknet`, OpenCV 4's darknet importer), `plain` (our `Darknet`, float32), `fused`
(`net.fuse()`: batch norm folded, prepacked oneDNN weights), `bf16` (`net.fuse("bf16")`), `onnxruntime`
(our ONNX export, threads that sleep when idle), optionally `fused-nopack` (folded, channels_last,
PyTorch's own conv dispatch), and
`detect`: the fused forward plus darknet's region decode and NMS
(`yolov2.detect.detector.Detector.detect_batch`).
Each path runs once per round, rounds in random orders, so load from other processes hits all alike; the
table gives medians. Reference for the FLOP count: darknet `src/convolutional_layer.c` (`l.bflops`).

PyTorch's OpenMP threads spin while they wait, which on a machine shared with other work (or with
OpenCV's own thread pool) costs PyTorch up to half its speed. OpenMP reads `OMP_WAIT_POLICY` once, when
torch loads, so the command re-runs itself with `OMP_WAIT_POLICY=PASSIVE` unless told otherwise
(`--omp-wait-policy`); the JSON records the policy in force.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from yolov2 import fast_mode
from yolov2.darknet.cfg import CfgError, Section
from yolov2.darknet.infer import bf16_supported, relative_error
from yolov2.darknet.layers import Convolutional
from yolov2.darknet.model import Darknet
from yolov2.darknet.weights import WeightsError
from yolov2.data.voc import DatasetError
from yolov2.files import write_text

MODELS = {"tiny": "yolov2-tiny-voc", "voc": "yolov2-voc"}
PATHS = ("opencv", "plain", "fused", "bf16", "onnxruntime", "detect")
ALL_PATHS = (*PATHS, "fused-nopack")


def random_darknet(cfg: str | Path | Sequence[Section], seed: int = 0, calibrate: int = 128) -> Darknet:
    """An eval-mode net with random weights that behave like trained ones, reproducibly.

    Convolutions: darknet's initialisation, with one output channel in twenty nearly dead (weights x1e-3:
    its rolling variance ends near 1e-6 x, where batch norm's ε = 1e-5 dominates √(σ² + ε), as in trained
    nets). Batch norm: scales γ ~ |N(1, .5)|, a tenth of them negative, shifts β ~ N(0, .2), and rolling
    statistics measured on a random batch at calibrate x calibrate, so activations keep their scale
    through the depth and the logits stay in a trained net's range.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Darknet(cfg)
        bns = [m.bn for m in net.conv_layers() if m.bn is not None]
        with torch.no_grad():
            for layer in net.conv_layers():
                if layer.bn is not None:
                    _perturb(layer)
            for bn in bns:
                bn.momentum = 1.0  # one training-mode batch sets the rolling statistics to its own
            net.train()(torch.rand(2, net.channels, calibrate, calibrate))
        for bn in bns:
            bn.momentum = 0.01
    return net.eval()


def _perturb(layer: Convolutional) -> None:
    bn, n = layer.bn, layer.filters
    sign = torch.where(torch.rand(n) < 0.1, -1.0, 1.0)
    bn.weight.copy_(sign * (1 + 0.5 * torch.randn(n)).abs())
    bn.bias.copy_(0.2 * torch.randn(n))
    layer.conv.weight[torch.rand(n) < 0.05] *= 1e-3


def layer_flops(net: Darknet, height: int | None = None, width: int | None = None) -> list[int]:
    """FLOPs of each layer at height x width, in layer order: darknet's `l.bflops` x 1e9.

    A convolution does 2 x size² x (input channels / groups) x filters x out_h x out_w (a multiply and an
    add per weight and output value); darknet counts 0 for every other layer (max-pool, route, reorg,
    region), and so does this.
    """
    rows = net.summary(height, width)
    flops = [0] * len(rows)
    for m in net.conv_layers():
        _, out_h, out_w = rows[m.index]["output"]
        flops[m.index] = 2 * m.size ** 2 * (rows[m.index]["input"][0] // m.groups) * m.filters * out_h * out_w
    return flops


def count_flops(net: Darknet, height: int | None = None, width: int | None = None) -> int:
    """Multiply-adds x 2 of every conv at height x width (darknet's `l.bflops` x 1e9, summed)."""
    return sum(layer_flops(net, height, width))


def time_interleaved(runners: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                     seed: int = 0) -> dict[str, list[float]]:
    """Milliseconds of each runner per round, each round in a fresh random order: no runner always goes
    first or always follows the same other one (whose thread pool may still be spinning)."""
    names = list(runners)
    for _ in range(warmup):  # oneDNN primitive creation, weight packing, OpenCV's layer fusion
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    for _ in range(repeats):
        for name in rng.sample(names, len(names)):
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _opencv(net: Darknet, weights: Path) -> Callable[[Tensor], np.ndarray]:
    import cv2

    cv = cv2.dnn.readNetFromDarknet(str(net.net_options.path), str(weights))
    last = f"conv_{net.head}"  # the head conv: OpenCV's region output applies its own thresh and NMS

    def run(x: Tensor) -> np.ndarray:
        cv.setInput(x.numpy())
        return cv.forward(last)

    return run


def _paths(net: Darknet, paths: list[str], tmp: Path, size: int, threads: int) -> dict[str, Callable]:
    """path -> prepare(x) -> (run(), output() for the agreement check or None), built once per model."""
    fns: dict[str, Callable[[Tensor], object]] = {}
    if "opencv" in paths:
        weights = tmp / "random.weights"
        net.save_weights(weights)
        fns["opencv"] = _opencv(net, weights)
    models = {"plain": lambda: net, "fused": lambda: net.fuse(), "fused-nopack": lambda: net.fuse(pack=False),
              "bf16": lambda: net.fuse("bf16")}
    for name, make in models.items():
        if name in paths and (name != "bf16" or bf16_supported()):
            fns[name] = make()
    if "onnxruntime" in paths:
        from yolov2.deploy.export import export_onnx, onnx_session, run_onnx

        session = onnx_session(export_onnx(net, tmp / "model.onnx", (size, size)), threads, spin=False)
        fns["onnxruntime"] = lambda x: run_onnx(session, x)
    prepared = {k: _same_call(f) for k, f in fns.items()}
    if "detect" in paths:
        prepared["detect"] = _detect(net)
    return prepared


def _same_call(f: Callable) -> Callable:
    """prepare(x) for a forward: the timed run and the output checked are the same call f(x)."""
    return lambda x: ((lambda: f(x)), (lambda: f(x)))


def _detect(net: Darknet) -> Callable:
    from yolov2.detect.detector import Detector

    detector = Detector(net, thresh=0.5)  # detect's defaults: fp32, fused

    def prepare(x: Tensor) -> tuple[Callable, None]:
        inputs = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # (N, H, W, 3), as preprocess gives
        sizes = np.tile([500, 375], (len(x), 1))  # letterboxed 500x375 originals
        return (lambda: detector.detect_batch(inputs, sizes)), None

    return prepare


def bench_model(cfg: str, batches: list[int], size: int, repeats: int, paths: list[str], threads: int,
                seed: int = 0) -> list[dict]:
    """Table rows for one cfg: per batch and path the median ms, ratio to OpenCV, GFLOP/s, agreement."""
    net = random_darknet(cfg, seed, calibrate=size)
    flops = count_flops(net, size, size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepare = _paths(net, paths, Path(tmp), size, threads)
        for batch in batches:
            x = torch.rand(batch, net.channels, size, size, generator=torch.Generator().manual_seed(seed))
            runners = {k: p(x) for k, p in prepare.items()}
            with torch.inference_mode():
                ref = net(x)
                times = time_interleaved({k: v[0] for k, v in runners.items()}, repeats)
                outs = {k: v[1]() for k, v in runners.items() if v[1]}
            errors = {k: (relative_error(o, ref), relative_error(o, ref, mean=True)) for k, o in outs.items()}
            medians = {k: statistics.median(ts) for k, ts in times.items()}
            for name, ts in times.items():
                ms = medians[name]
                rows.append({"model": Path(str(cfg)).stem, "batch": batch, "size": size, "path": name,
                             "ms": ms, "ms_min": min(ts), "vs_opencv": _ratio(ms, medians.get("opencv")),
                             "vs_fused": _ratio(ms, medians.get("fused")), "gflops": flops * batch / ms / 1e6,
                             "flops": flops, "rel_err": errors.get(name, (None,))[0],
                             "rel_err_mean": errors.get(name, (None, None))[1]})
    return rows


def _precisions() -> tuple[str, ...]:
    return ("fp32", "bf16") if bf16_supported() else ("fp32",)


def _ratio(ms: float, base: float | None) -> float | None:
    return ms / base if base else None


def map_by_precision(cfg: str | Path, weights: str | Path, voc_root: str | Path, year: str = "2007",
                     image_set: str = "test", precisions: tuple[str, ...] = ("fp32", "bf16"),
                     batch: int = 8, limit: int | None = None) -> dict[str, float]:
    """VOC07 mAP of `valid`'s detections (thresh .005, letterbox) per precision of the fused path.

    voc_root: a devkit folder (`VOC{year}/...`), e.g. `python -m yolov2 synth`'s; class names from
    `voc_root/classes.names` when present, else VOC's. limit: only the first `limit` images of the set.
    """
    from yolov2.data.image import read_image
    from yolov2.data.labels import read_class_names
    from yolov2.data.voc import VOC_CLASSES
    from yolov2.detect.detector import Detector
    from yolov2.detect.evaluate import evaluate_detections, load_annotations
    from yolov2.detect.postprocess import results_from_detections

    net = Darknet(cfg).eval()
    net.load_weights(weights)
    names_file = Path(voc_root) / "classes.names"
    names = read_class_names(names_file) if names_file.is_file() else list(VOC_CLASSES)
    annotations = load_annotations(voc_root, year, image_set)
    ids = list(annotations)[:limit]
    annotations = {i: annotations[i] for i in ids}
    folder = Path(voc_root) / f"VOC{year}" / "JPEGImages"
    result = {}
    for precision in precisions:
        detector = Detector(net, thresh=0.005, relative=False, precision=precision)  # validate_detector's
        dets = {}
        for k in range(0, len(ids), batch):
            chunk = ids[k:k + batch]
            dets |= dict(zip(chunk, detector([read_image(folder / f"{i}.jpg") for i in chunk]), strict=True))
        result[precision] = evaluate_detections(annotations, results_from_detections(dets, names), names).map
    return result


def conditions(threads: int, repeats: int) -> dict:
    """What the timings depend on: versions, threads, OpenMP wait policy, CPU, load."""
    import cv2

    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"torch": torch.__version__, "opencv": cv2.__version__, "onnxruntime": ort, "threads": threads,
            "repeats": repeats, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16": bf16_supported(),
            "loadavg": list(os.getloadavg())}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """A plain-text table (also valid Markdown)."""
    head = "| model | batch | path | ms | vs OpenCV | vs fused | GFLOP/s | max diff/range | mean diff/range |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['path']} | {r['ms']:.1f} "
                     f"| {_fmt(r['vs_opencv'], '.2f')} | {_fmt(r['vs_fused'], '.2f')} | {r['gflops']:.0f} "
                     f"| {_fmt(r['rel_err'], '.1e')} | {_fmt(r['rel_err_mean'], '.1e')} |")
    return "\n".join(lines)


def _list(kind: Callable, choices=None):
    def parse(text: str) -> list:
        try:
            items = [kind(s) for s in text.split(",") if s]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list") from None
        bad = [s for s in items if choices is not None and s not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices or [])}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolov2 bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m yolov2 bench --models tiny --batches 1 "
                                "--json bench.json")
    p.add_argument("--models", type=_list(str), default=list(MODELS),
                   help="tiny, voc, or cfg names/paths, comma-separated (default tiny,voc)")
    p.add_argument("--batches", type=_list(int), default=[1, 8], help="comma-separated (default 1,8)")
    p.add_argument("--size", type=int, default=416, help="input width and height (default 416)")
    p.add_argument("--repeats", type=int, default=3 if fast_mode() else 20, help="timed rounds (default 20)")
    p.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    p.add_argument("--paths", type=_list(str, ALL_PATHS), default=list(PATHS),
                   help=f"comma-separated, from {', '.join(ALL_PATHS)}")
    p.add_argument("--json", help="also write the table and the conditions to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "inherit"], default="PASSIVE",
                   help="OpenMP's for torch (default PASSIVE: re-runs the command with it set if needed)")
    p.add_argument("--map-data", help="also the mAP of fp32 vs bf16 on this devkit's test set (e.g. synth's)")
    p.add_argument("--map-cfg", default="yolov2-tiny-synth", help="cfg for --map-data (yolov2-tiny-synth)")
    p.add_argument("--map-weights", help="trained .weights for --map-data")
    return p


def _rerun(argv: list[str], policy: str) -> int | None:
    """The exit status of this command re-run with OMP_WAIT_POLICY=policy, or None when already in force."""
    if policy == "inherit" or os.environ.get("OMP_WAIT_POLICY", "").upper() == policy:
        return None
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    return subprocess.run([sys.executable, "-m", "yolov2", "bench", *argv], env=env).returncode


def main(argv: list[str]) -> int:
    """`python -m yolov2 bench`: print the table, optionally write it as JSON."""
    args = build_parser().parse_args(argv)
    status = _rerun(argv, args.omp_wait_policy)
    if status is not None:
        return status
    if args.size <= 0 or args.size % 32 or args.repeats < 1 or args.threads < 1 or min(args.batches) < 1:
        print("yolov2 bench: error: --size must be a positive multiple of 32; --repeats, --threads and "
              "--batches at least 1", file=sys.stderr)
        return 2
    if "onnxruntime" in args.paths:
        from yolov2.deploy.export import missing_extra

        missing = missing_extra("onnx", "onnxscript", "onnxruntime")
        if missing:
            print(f"yolov2 bench: error: {missing}; or leave onnxruntime out of --paths", file=sys.stderr)
            return 1
    import cv2

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)  # OpenCV's own pool, not OpenMP's
    if args.map_data and not args.map_weights:
        print("yolov2 bench: error: --map-data needs --map-weights (a trained model)", file=sys.stderr)
        return 2
    if args.json and Path(args.json).exists() and not args.force:  # before minutes of timing
        print(f"yolov2 bench: error: {args.json}: exists (use --force to overwrite)", file=sys.stderr)
        return 1
    try:
        for m in args.models:
            Darknet(MODELS.get(m, m))  # a bad cfg fails here, before minutes of timing
        info = conditions(args.threads, args.repeats)
        rows = [r for m in args.models
                for r in bench_model(MODELS.get(m, m), args.batches, args.size, args.repeats, args.paths,
                                     args.threads)]
        maps = map_by_precision(args.map_cfg, args.map_weights, args.map_data,
                                                precisions=_precisions()) if args.map_data else None
    except (CfgError, WeightsError, DatasetError) as e:
        print(f"yolov2 bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])
    info["loadavg_after"] = list(os.getloadavg())
    print(f"{args.size}x{args.size}, {args.threads} threads, median of {args.repeats} interleaved rounds; "
          f"load average {info['loadavg'][0]:.1f} on {info['cpus']} CPUs; "
          f"OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}")
    print(format_table(rows))
    if "opencv" in args.paths:
        print("OpenCV's batch norm uses eps 1e-6 (darknet 1e-5): its logits differ where rolling variances "
              "are near 1e-5, as in the random nets' nearly dead channels.")
    if maps:
        print(f"mAP (VOC07) of {args.map_cfg} on {args.map_data} test: "
              + ", ".join(f"{k} {100 * v:.2f}" for k, v in maps.items()))
    if args.json:
        try:
            write_text(args.json, json.dumps({"conditions": info, "rows": rows, "map": maps}, indent=1))
        except OSError as e:
            print(f"yolov2 bench: error: {e}", file=sys.stderr)
            return 1
    return 0
