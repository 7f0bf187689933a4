"""Where a training process runs: its device, rank and world size, mixed precision, seeding.

Reference: darknet examples/detector.c (`train_detector`: one network per `-gpus` entry,
`cuda_set_device`) and src/network.c (`train_networks`, `sync_nets`: the GPUs' weights averaged).
Here one process per GPU under torchrun, joined by torch.distributed (DDP averages the gradients
instead), or one process on the CPU; `all_sum` adds the ranks' statistics.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from yolov2.darknet.infer import bf16_supported
from yolov2.train.settings import TrainError


@dataclass
class Runtime:
    """Where this process runs: its device, rank and world size; none of it is saved."""

    device: torch.device
    rank: int = 0
    world: int = 1
    workers: int = 0
    progress: bool = True
    amp: bool | None = None  # None: the device's default, on for CUDA, off (float32) on the CPU
    new_precision: bool = False  # --resume may continue a run in another precision than its checkpoint's

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def amp_on(self) -> bool:
        return self.device.type == "cuda" if self.amp is None else self.amp

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype: on CUDA bf16 where the GPU has it, else fp16 (with a GradScaler); on the
        CPU bf16 (needs AVX512-BF16 or AMX, :func:`check_amp`); None with amp off (float32)."""
        if not self.amp_on:
            return None
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16

    @property
    def memory_format(self) -> torch.memory_format:
        """channels_last on CUDA and under CPU bf16 autocast (oneDNN's AMX/AVX512-BF16 kernels want it);
        NCHW for CPU float32, whose results are darknet's."""
        cpu_fp32 = self.device.type == "cpu" and self.amp_dtype is None
        return torch.contiguous_format if cpu_fp32 else torch.channels_last


def check_amp(rt: Runtime) -> None:
    """A TrainError unless this runtime's mixed precision can run here (CPU AMP needs native bf16)."""
    if rt.device.type == "cpu" and rt.amp_on and not bf16_supported("cpu"):
        raise TrainError("--amp on the CPU trains in bf16, which needs AVX512-BF16 or AMX (and PyTorch with "
                         "oneDNN); this CPU has neither: train without --amp (float32)")
    if rt.device.type not in ("cpu", "cuda") and rt.amp_on:
        raise TrainError(f"--amp: mixed precision runs on cpu or cuda, not {rt.device.type}; use --no-amp")


def init_runtime(device: str | None, workers: int | None, progress: bool, amp: bool | None,
                 new_precision: bool = False) -> Runtime:
    """Join the process group torchrun set up (WORLD_SIZE > 1), pick the device: cuda:LOCAL_RANK, or cpu.

    amp: mixed precision (None: on for CUDA, off on the CPU); a TrainError where it cannot run.
    new_precision: a resume may change the run's precision (:func:`check_resume_precision`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {want}: CUDA is not available here (use --device cpu)")
    dev = torch.device(want)
    if dev.type == "cuda" and dev.index is None:  # DDP and set_device need an index
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # a handful of multi-scale shapes, each tuned once
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = min(8, max(1, cpus // world - 1)) if dev.type == "cuda" else min(2, max(0, cpus - 1))
    rt = Runtime(dev, rank, world, workers, progress and rank == 0, amp, new_precision)
    check_amp(rt)
    return rt


def all_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum a tensor over the ranks (identity on one)."""
    if rt.world > 1:
        dist.all_reduce(t)
    return t


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the model's initial weights come from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def precision(rt: Runtime) -> str:
    """What this runtime's forwards compute in: "float32", or the autocast dtype ("bfloat16", "float16")."""
    return "float32" if rt.amp_dtype is None else str(rt.amp_dtype).removeprefix("torch.")


def check_resume_precision(where: str | Path, saved: str | None, rt: Runtime, change: bool = False) -> None:
    """A TrainError naming the checkpoint `where` when its run's precision `saved` is not this runtime's:
    a resumed run continues exactly only in the arithmetic it started with. `change` (--new-precision)
    lets it go on in this runtime's precision on purpose; None (an older checkpoint): not recorded."""
    now = precision(rt)
    if saved is None or saved == now or change:
        return
    match = "--no-amp" if saved == "float32" else f"--amp on a device whose autocast is {saved}"
    raise TrainError(f"{where}: the run trained in {saved}, this resume would train in {now}; resume with "
                     f"{match} to continue it exactly, or pass --new-precision to continue in {now}")


def autocast(rt: Runtime):
    """The forward's mixed precision: CUDA bf16 or fp16, CPU bf16; nothing with amp off."""
    dtype = rt.amp_dtype
    return torch.autocast(rt.device.type, dtype=dtype) if dtype else nullcontext()


def now() -> float:
    return time.perf_counter()
