"""Training speed of yolov2-tiny-voc at 416: images/s with the data pipeline on, and off.

"On": the trainer's own DataLoader (JPEG decode, darknet's `load_data_detection` augmentation,
collate, host-to-device copy) feeding `Trainer.iteration`. "Off": the same iterations on one batch
pre-loaded on the device, so only the forward, loss, backward and update remain. The ratio says
how much the data pipeline slows training down (1.0: not at all).

    python benchmarks/bench_train.py                      # CPU: batch 8
    python benchmarks/bench_train.py --device cuda        # CUDA: batch 64, AMP
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from yolov2.darknet.cfg import stock_cfg
from yolov2.data.labels import write_class_names
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.train.command import Runtime, Settings, Trainer


def timed(trainer: Trainer, iterations: int) -> float:
    """Images per second over `iterations` training iterations (after the caller's warm-up)."""
    if trainer.rt.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iterations):
        trainer.iteration()  # ends in .tolist(): the device has finished the iteration
    return iterations * trainer.step_images / (time.perf_counter() - t)


def make_trainer(root: Path, device: torch.device, batch: int, size: int, workers: int) -> Trainer:
    # tiny-voc has 20 classes: the 5 synthetic ones and 15 that never occur
    names = root / "twenty.names"
    write_class_names(names, [*SYNTH_CLASSES, *(f"unused{i}" for i in range(15))])
    s = Settings(str(stock_cfg("yolov2-tiny-voc")), str(root / "voc"), names=str(names), batch=batch,
                 subdivisions=1, sizes=[size], max_batches=10**9)
    return Trainer(s, Runtime(device, workers=workers, progress=False), root / "run", resume=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="images per iteration (default 8 on CPU, 64 on CUDA)")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--iterations", type=int, help="timed iterations (default 5 on CPU, 30 on CUDA)")
    p.add_argument("--workers", type=int, help="loader processes (default: the trainer's choice)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batch, iterations = a.batch or (64 if cuda else 8), a.iterations or (30 if cuda else 5)
    workers = a.workers if a.workers is not None else (8 if cuda else 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic_voc(root / "voc", max(a.images, batch), 0, seed=0)
        (root / "run").mkdir()
        trainer = make_trainer(root, device, batch, a.size, workers)
        for _ in range(2):  # warm-up: workers start, cuDNN picks its kernels
            trainer.iteration()
        pipeline = timed(trainer, iterations)
        fixed = trainer.next_batch()
        trainer.next_batch = lambda: fixed  # data pipeline off: one pre-loaded batch on the device
        trainer.iteration()
        compute = timed(trainer, iterations)
    amp = trainer.rt.amp_dtype
    print(f"yolov2-tiny-voc {a.size}x{a.size}, batch {batch}, {device}, amp {amp}, {workers} loader workers, "
          f"{torch.get_num_threads()} torch threads")
    print(f"data pipeline on : {pipeline:8.1f} images/s")
    print(f"data pipeline off: {compute:8.1f} images/s (pre-loaded tensors)")
    print(f"ratio on/off     : {pipeline / compute:8.2f}")


if __name__ == "__main__":
    main()
