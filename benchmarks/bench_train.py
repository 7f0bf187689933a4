"""Training speed of yolov2-tiny-voc at 416 per precision: float32 and mixed precision side by side.

For each precision, three figures in images/s (medians over the timed iterations):

- "pipeline on": the trainer's own DataLoader (JPEG decode, darknet's `load_data_detection`
  augmentation, collate, host-to-device copy) feeding `Trainer.iteration`;
- "trainer": the same iterations on one batch pre-loaded on the device (data pipeline off);
- "floor": the bare forward (under the precision's autocast), region loss, backward and optimizer
  step on that batch, with none of the trainer's bookkeeping; trainer/floor is its overhead.

The precisions' iterations alternate, so a busy machine slows them alike and their ratio holds even
where the absolute figures do not. On a CPU the mixed precision is bf16 autocast + channels_last and
needs AVX512-BF16 or AMX (without them only float32 runs); on CUDA bf16 or fp16 autocast.

    python benchmarks/bench_train.py                      # CPU: batch 8
    python benchmarks/bench_train.py --device cuda        # CUDA: batch 64
    python benchmarks/bench_train.py --tiny               # seconds: 64 px, batch 2 (what tests run)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.infer import bf16_supported
from yolov2.data.labels import write_class_names
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.train.command import Runtime, Settings, Trainer
from yolov2.train.runtime import autocast


def cpu_name() -> str:
    """The CPU's model name (lscpu's), for the printout."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(root: Path, device: torch.device, batch: int, size: int, workers: int, amp: bool) -> Trainer:
    # tiny-voc has 20 classes: the 5 synthetic ones and 15 that never occur
    names = root / "twenty.names"
    write_class_names(names, [*SYNTH_CLASSES, *(f"unused{i}" for i in range(15))])
    s = Settings(str(stock_cfg("yolov2-tiny-voc")), str(root / "voc"), names=str(names), batch=batch,
                 subdivisions=1, sizes=[size], max_batches=10**9)
    out = root / f"run-{amp}"
    out.mkdir()
    return Trainer(s, Runtime(device, workers=workers, progress=False, amp=amp), out, resume=False)


def floor_step(t: Trainer, images: torch.Tensor, truths: torch.Tensor) -> None:
    """The bare training step: forward, loss, backward, update (the trainer's model and optimizer)."""
    with autocast(t.rt):
        logits = t.net(images)
    loss = t.loss_fn(logits, truths, t.seen)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.opt)
    t.scaler.update()
    t.opt.zero_grad(set_to_none=True)


def interleaved(steps: dict, device: torch.device, iterations: int, images: int) -> dict:
    """Median images/s of each step (a dict of callables), the steps alternating within each of
    `iterations` rounds (forwards, then backwards), so a change in the machine's load hits them alike."""
    times: dict = {k: [] for k in steps}
    for r in range(iterations):
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            sync(device)
            t = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: images / statistics.median(v) for k, v in times.items()}


def run(device: torch.device, batch: int, size: int, iterations: int, workers: int, images: int,
        precisions: list[str]) -> dict[str, dict[str, float]]:
    """{precision: {"pipeline", "trainer", "floor": images/s}} for yolov2-tiny-voc at `size`."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic_voc(root / "voc", max(images, batch), 0, seed=0)
        trainers = {p: make_trainer(root, device, batch, size, workers, p != "fp32") for p in precisions}
        for t in trainers.values():
            for _ in range(2):  # warm-up: workers start, oneDNN / cuDNN pick their kernels
                t.iteration()
        pipeline = interleaved({p: t.iteration for p, t in trainers.items()}, device, iterations, batch)
        fixed = {}
        for p, t in trainers.items():
            fixed[p] = t.next_batch()
            t.next_batch = partial(tuple, fixed[p])  # data pipeline off: one pre-loaded batch
            t.iteration()
        steps = {(p, "trainer"): t.iteration for p, t in trainers.items()}
        steps |= {(p, "floor"): partial(floor_step, t, *fixed[p]) for p, t in trainers.items()}
        off = interleaved(steps, device, iterations, batch)
        for t in trainers.values():
            t._it = t.loader = None  # stop the workers before the data goes
    return {p: {"pipeline": pipeline[p], "trainer": off[p, "trainer"], "floor": off[p, "floor"]}
            for p in precisions}


def precision_names(device: torch.device) -> list[str]:
    """fp32, and the mixed precision this device runs (none on a CPU without native bf16)."""
    if device.type == "cuda":
        return ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    return ["fp32", "bf16"] if bf16_supported("cpu") else ["fp32"]


def table(result: dict[str, dict[str, float]]) -> list[str]:
    """The printed rows: one per precision, its speed-up over fp32 and the trainer's share of its floor."""
    rows = ["| precision | pipeline on | trainer | floor | trainer/floor | vs fp32 (trainer) "
            "| vs fp32 (floor) |", "|---|---|---|---|---|---|---|"]
    base = result["fp32"]
    for p, r in result.items():
        rows.append(f"| {p} | {r['pipeline']:.1f} | {r['trainer']:.1f} | {r['floor']:.1f} | "
                    f"{r['trainer'] / r['floor']:.2f} | {r['trainer'] / base['trainer']:.2f}x | "
                    f"{r['floor'] / base['floor']:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, help="images per iteration (default 8 on CPU, 64 on CUDA)")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--iterations", type=int, help="timed iterations (default 5 on CPU, 30 on CUDA)")
    p.add_argument("--workers", type=int, help="loader processes (default 1 on CPU, 8 on CUDA)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images")
    p.add_argument("--tiny", action="store_true", help="64 px, batch 2, 2 iterations, no workers: smoke run")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if a.tiny:
        a.size, a.batch, a.iterations, a.workers, a.images = 64, a.batch or 2, a.iterations or 2, 0, 4
    batch, iterations = a.batch or (64 if cuda else 8), a.iterations or (30 if cuda else 5)
    workers = a.workers if a.workers is not None else (8 if cuda else 1)
    result = run(device, batch, a.size, iterations, workers, a.images, precision_names(device))
    where = torch.cuda.get_device_name(device) if cuda else cpu_name()
    print(f"yolov2-tiny-voc {a.size}x{a.size}, batch {batch}, {device} ({where}), {workers} loader workers, "
          f"{torch.get_num_threads()} torch threads; images/s, median of {iterations} interleaved iterations")
    print("\n".join(table(result)))
    if "fp32" in result and len(result) == 1:
        print("(no mixed precision here: a CPU needs AVX512-BF16 or AMX for bf16)")
    return result


if __name__ == "__main__":
    main()
