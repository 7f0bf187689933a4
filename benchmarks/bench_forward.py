"""Forward time of yolov2-tiny-voc at 416x416, batch 1: our Darknet model vs OpenCV's DNN, same weights.

Random darknet-initialised weights are written with our writer to a temporary `.weights` file and read
by both. Both run with the same number of threads, interleaved run by run (so load from other
processes hits both alike); the medians and their ratio are printed.

    .venv/bin/python benchmarks/bench_forward.py [--runs 30] [--threads 2] [--size 416] [--cfg CFG]

On a machine busy with other work, PyTorch's OpenMP threads spin while waiting for each other and
lose far more than OpenCV's thread pool; `OMP_WAIT_POLICY=PASSIVE` shows the compute-bound ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from yolov2 import Darknet


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def iqr(times: list[float]) -> float:
    q75, q25 = np.percentile(times, [75, 25])
    return float(q75 - q25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov2-tiny-voc")
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)
    net = Darknet(args.cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random.weights"
        net.save_weights(weights)
        cv = cv2.dnn.readNetFromDarknet(str(net.net_options.path), str(weights))
    x = torch.rand(1, 3, args.size, args.size)
    blob = x.numpy()
    last = f"conv_{net.head}"

    def ours():
        with torch.inference_mode():
            net(x)

    def theirs():
        cv.setInput(blob)
        cv.forward(last)

    for _ in range(3):  # warm-up: allocations, OpenCV's layer fusion, oneDNN kernels
        ours()
        theirs()
    t_ours, t_cv = [], []
    for _ in range(args.runs):
        t_ours.append(timed(ours))
        t_cv.append(timed(theirs))
    m_ours, m_cv = statistics.median(t_ours), statistics.median(t_cv)
    print(f"{args.cfg} {args.size}x{args.size} batch 1, {args.threads} threads, "
          f"median of {args.runs} interleaved runs")
    print(f"  yolov2 (PyTorch {torch.__version__}): {m_ours:8.1f} ms  (IQR {iqr(t_ours):.1f})")
    print(f"  OpenCV DNN ({cv2.__version__}):         {m_cv:8.1f} ms  (IQR {iqr(t_cv):.1f})")
    print(f"  ratio yolov2 / OpenCV: {m_ours / m_cv:.2f}")


if __name__ == "__main__":
    main()
