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

import numpy as np
import torch
import torch.distributed as dist

from yolov2.train.settings import TrainError


@dataclass
class Runtime:
    """Where this process runs: its device, rank and world size; none of it is saved."""

    device: torch.device
    rank: int = 0
    world: int = 1
    workers: int = 0
    progress: bool = True
    amp: bool = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """bf16 where the GPU has it, else fp16 (with a GradScaler); None on CPU or with amp off."""
        if not self.amp or self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def init_runtime(device: str | None, workers: int | None, progress: bool, amp: bool) -> Runtime:
    """Join the process group torchrun set up (WORLD_SIZE > 1), pick the device: cuda:LOCAL_RANK, or cpu."""
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
    return Runtime(dev, rank, world, workers, progress and rank == 0, amp)


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


def autocast(rt: Runtime):
    """Mixed precision on CUDA (bf16 or fp16), nothing on CPU."""
    dtype = rt.amp_dtype
    return torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()


def now() -> float:
    return time.perf_counter()
