"""Training: darknet's `train_detector` loop in PyTorch, on one device or on several with DDP.

Reference: darknet examples/detector.c (`train_detector`), src/network.c (`train_network_datum`,
`update_network`, `train_networks` and `sync_nets` for `-gpus`).

One *iteration* is darknet's: `subdivisions` forwards of batch/subdivisions images, their gradients
accumulated, then one update. Before each forward `seen` grows by that forward's images on every
rank (darknet: `*net->seen += net->batch` before `forward_network`) and the loss gets that value, so
the `seen < 12800` prior switches off where darknet's does. batch_num = seen // batch drives the
rate and the stop at `max_batches`.

Recipes (:data:`RECIPES`):
* `darknet`: the cfg's `[net]`, :func:`yolov2.schedule.darknet_sgd`, darknet's loader. On K ranks each
  runs the full cfg batch and the rate is multiplied by K, as darknet's `-gpus` does
  (`learning_rate *= ngpus`; `sync_nets` counts every GPU's images in seen, so batch_num advances by K).
* `adam`: the PyTorch port's: Adam 1e-4, no decay, batch 32 split over the ranks, 280 epochs, rate
  x0.1 at epochs 200 and 250 (at 200/280 and 250/280 of `max_batches`), the crop-jitter loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from yolov2.cfg import CfgError, Section, stock_cfg
from yolov2.checkpoint import (
    CHECKPOINT,
    EVAL,
    LOG,
    PLOT,
    SETTINGS,
    CheckpointError,
    atomic_save,
    cfg_fingerprint,
    load_checkpoint,
    make_checkpoint,
    open_log,
    plot_log,
    prepare_run_dir,
    read_log,
    set_rng_state,
)
from yolov2.data.augment import Augmenter
from yolov2.data.dataset import DetectionDataset, MultiScaleBatchSampler, collate, worker_init
from yolov2.data.voc import VOC_CLASSES, load_voc, read_class_names
from yolov2.detect import Detector
from yolov2.evaluate import evaluate_detections, load_annotations
from yolov2.image import load_image
from yolov2.loss import RegionLoss
from yolov2.model import Darknet
from yolov2.postprocess import results_from_detections
from yolov2.schedule import Schedule, darknet_sgd, set_rate

__all__ = ["RECIPES", "Settings", "TrainError", "TrainResult", "Trainer", "main", "read_log", "train",
           "voc_map"]

RECIPES = {
    "darknet": {"loader": "detection", "optimizer": "sgd", "split_batch": False},
    "adam": {"loader": "region", "optimizer": "adam", "split_batch": True, "batch": 32, "subdivisions": 1,
             "learning_rate": 1e-4, "epochs": 280, "step_epochs": (200, 250), "scales": (0.1, 0.1)},
}


class TrainError(RuntimeError):
    """A training run that cannot start or continue; the message says why and what to do."""


@dataclass
class Settings:
    """What a run trains: the checkpoint stores these, and `--resume` reuses them.

    None means "resolve from the cfg / recipe" (:func:`resolve`). sizes: square training sizes
    (multi-scale when several); sets: VOC `(year, image_set)` pairs; every: iterations per size;
    final_batches: darknet trains its last 200 batches at the largest size (0: no such phase).
    """

    cfg: str
    data: str
    recipe: str = "darknet"
    loader: str | None = None
    sets: list | None = None
    names: str | None = None
    max_batches: int | None = None
    batch: int | None = None
    subdivisions: int | None = None
    sizes: list | None = None
    learning_rate: float | None = None
    seed: int = 0
    every: int = 10
    weights: str | None = None
    pretrained: str | None = None
    partial: int | None = None
    clear: bool = False
    checkpoint_every: int = 100
    final_batches: int = 200


@dataclass
class TrainResult:
    """Where a finished run left its files, and what it did."""

    out_dir: Path
    weights: Path  # darknet .weights of the final model
    checkpoint: Path
    log: Path
    plot: Path | None
    seen: int
    batches: int  # darknet batch_num at the end
    elapsed: float  # seconds of this process's training (a resumed run counts its part only)
    images_per_s: float
    map: float | None = None  # VOC07 mAP on the --eval image set, when one was given


# --------------------------------------------------------------------------- settings


def training_batch(net: Section) -> tuple[int, int]:
    """(batch, subdivisions) for training: `[net]`'s, or, in a testing cfg (batch=1), the values its
    `# Training` comments give (darknet's stock cfgs: `# batch=64`, `# subdivisions=2`), else 64, 1."""
    batch, subdivisions = net.get_int("batch", 1), net.get_int("subdivisions", 1)
    if batch > 1:
        return batch, subdivisions
    found = {"batch": 64, "subdivisions": 1}
    try:
        lines = Path(net.path).read_text().splitlines()[net.line:]
    except OSError:
        return found["batch"], found["subdivisions"]
    for line in lines:
        if line.strip().startswith("["):
            break
        m = re.match(r"\s*#\s*(batch|subdivisions)\s*=\s*(\d+)\s*$", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found["batch"], found["subdivisions"]


def parse_sizes(text: str) -> list[int]:
    """`416`, `256,288,320` or a range `320-608` (step 32) -> sizes, each a multiple of 32."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            sizes = list(range(lo, hi + 1, 32))
        else:
            sizes = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise TrainError(f"--sizes '{text}': expected N, N,M,... or MIN-MAX") from None
    if not sizes or any(s <= 0 or s % 32 for s in sizes):
        raise TrainError(f"--sizes '{text}': sizes must be positive multiples of 32")
    return sizes


def parse_sets(text: str) -> list[list[str]]:
    """`2007:trainval,2012:trainval` -> [[year, image_set], ...]."""
    out = [p.split(":") for p in text.split(",") if p]
    if not out or any(len(p) != 2 or not all(p) for p in out):
        raise TrainError(f"--sets '{text}': expected YEAR:SET[,YEAR:SET...], e.g. 2007:trainval")
    return out


def resolve(s: Settings, net, n_images: int, world: int) -> Settings:
    """Fill every None of `s` from the recipe, the cfg's [net]/[region] and the dataset size."""
    if s.recipe not in RECIPES:
        raise TrainError(f"unknown recipe '{s.recipe}' (choose from {', '.join(RECIPES)})")
    r = RECIPES[s.recipe]
    batch, subdivisions = training_batch(net.net_options)
    batch = s.batch or r.get("batch", batch)
    subdivisions = s.subdivisions or (r.get("subdivisions", subdivisions) if not s.batch else 1)
    per_rank = batch // world if r["split_batch"] else batch
    if batch < 1 or per_rank * (world if r["split_batch"] else 1) != batch or per_rank % subdivisions:
        raise TrainError(f"batch {batch} does not split into {world} rank(s) x {subdivisions} subdivisions")
    if r["optimizer"] == "adam":
        default_max = r["epochs"] * max(1, n_images // (per_rank * world))  # 280 epochs
    else:
        default_max = net.net_options.get_int("max_batches", 0)
    max_batches = s.max_batches or default_max
    if max_batches < 1:
        raise TrainError(f"{s.cfg}: max_batches is 0; give it in [net] or with --max-batches")
    sizes = s.sizes or (list(range(320, 609, 32)) if net.region.random else [net.width])
    return dataclasses.replace(
        s, loader=s.loader or r["loader"], batch=batch, subdivisions=subdivisions, max_batches=max_batches,
        sizes=[int(v) for v in sizes],
        learning_rate=s.learning_rate or r.get("learning_rate") or net.net_options.get_float("learning_rate",
                                                                                             0.001))


def make_schedule(s: Settings, net) -> Schedule:
    """The learning-rate schedule: the cfg's policy (darknet), or Adam's two steps."""
    if s.recipe == "adam":
        r = RECIPES["adam"]
        steps = tuple(round(s.max_batches * e / r["epochs"]) for e in r["step_epochs"])
        return Schedule(s.learning_rate, "steps", steps=steps, scales=r["scales"], max_batches=s.max_batches)
    return Schedule.from_net(net.net_options, max_batches=s.max_batches, learning_rate=s.learning_rate)


# --------------------------------------------------------------------------- devices and ranks


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


# --------------------------------------------------------------------------- the loop


class DarknetSizes(MultiScaleBatchSampler):
    """The multi-scale sampler plus darknet's last phase: at a resize where `final(minibatch)` holds
    (darknet: batch_num + 200 > max_batches), the largest size (608) instead of a random one."""

    def __init__(self, *args, final: Callable[[int], bool] | None = None, **kw) -> None:
        self.final = final
        super().__init__(*args, **kw)

    def size_of(self, epoch: int, batch: int) -> int:
        g = epoch * self.batches_per_epoch + batch  # minibatches since the run started
        if self.sizes is not None and self.final is not None and self.final(g - g % self.every):
            return max(self.sizes)
        return super().size_of(epoch, batch)


LOG_FIELDS = ("step", "batch", "seen", "epoch", "size", "lr", "loss", "avg_loss", "avg_iou", "class", "obj",
              "no_obj", "avg_recall", "count", "images_per_s", "time")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the model's initial weights come from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stats_vector(loss: torch.Tensor, stats) -> torch.Tensor:
    """(7,) sums that add over forwards and ranks: loss, iou·n, class·n, obj·n, recall·n, no_obj, n."""
    t = stats.tensors
    n = t["count"].to(loss.dtype)
    per = [torch.nan_to_num(t[k].to(loss.dtype)) * n for k in ("avg_iou", "class", "obj", "avg_recall")]
    return torch.stack([loss, *per, t["no_obj"].to(loss.dtype), n])


class Trainer:
    """One run: model, optimizer, schedule, data order and the counters darknet keeps (seen, batch_num)."""

    def __init__(self, s: Settings, rt: Runtime, out: Path, resume: bool):
        self.rt, self.out = rt, out
        self.fingerprint = cfg_fingerprint(s.cfg)
        seed_everything(s.seed)
        self.net = Darknet(s.cfg)
        ckpt = None
        if resume:  # the settings of the run being continued win; cfg and data paths may have moved
            ckpt = load_checkpoint(out / CHECKPOINT, self.fingerprint, self.net.state_dict())
            s = dataclasses.replace(Settings(**ckpt["settings"]), cfg=s.cfg, data=s.data)
        self.seen = self._load_start(s) if ckpt is None else ckpt["seen"]
        self.dataset = self._dataset(s)
        self.s = s = resolve(s, self.net, len(self.dataset), rt.world)
        self.darknet = RECIPES[s.recipe]["optimizer"] == "sgd"
        per_rank = s.batch // rt.world if RECIPES[s.recipe]["split_batch"] else s.batch
        self.minibatch = per_rank // s.subdivisions  # images per forward on each rank
        self.step_images = self.minibatch * s.subdivisions * rt.world
        self.schedule = make_schedule(s, self.net)
        self.step, self.epoch, self.batch_in_epoch, self.avg_loss, self.elapsed = 0, 0, 0, -1.0, 0.0
        self.seen_start = self.seen
        self._build(ckpt)

    # ---- setup

    def _load_start(self, s: Settings) -> int:
        """Load --weights / --pretrained; the starting seen (darknet: the header's, 0 for partial/clear)."""
        if s.weights:
            self.net.load_weights(s.weights)
            return 0 if s.clear else int(self.net.seen)
        if s.pretrained:
            self.net.load_weights(s.pretrained, cutoff=s.partial)
        return 0

    def _dataset(self, s: Settings):
        root = Path(s.data)
        if not root.is_dir():
            raise TrainError(f"{root}: no such dataset directory (a VOC devkit root holding VOC2007/...)")
        sets = s.sets or [[y, n] for y, n in (("2007", "trainval"), ("2012", "trainval"))
                          if (root / f"VOC{y}").is_dir()]
        if not sets:
            raise TrainError(f"{root}: no VOC2007/ or VOC2012/ folder (is this a VOC devkit root?)")
        classes = class_names(root, s.names)
        if len(classes) != self.net.region.classes:
            raise TrainError(f"{s.cfg}: [region] classes={self.net.region.classes}, but the dataset has "
                             f"{len(classes)} class names ({s.names or root})")
        records = load_voc(root, [tuple(p) for p in sets], classes)
        opt = self.net.net_options
        aug = Augmenter(kind=s.loader or RECIPES[s.recipe]["loader"], jitter=self.net.region.jitter,
                        hue=opt.get_float("hue", 0), saturation=opt.get_float("saturation", 1),
                        exposure=opt.get_float("exposure", 1))
        return DetectionDataset(records, classes, augment=aug, seed=s.seed)

    def _build(self, ckpt: dict | None) -> None:
        s, rt = self.s, self.rt
        fmt = torch.channels_last if rt.device.type == "cuda" else torch.contiguous_format
        self.net.to(rt.device, memory_format=fmt)
        if ckpt is not None:
            self.net.load_state_dict(ckpt["model"])
        self.model = self.net
        if rt.world > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.loss_fn = RegionLoss.from_region(self.net.region, validate=False).to(rt.device)
        if self.darknet:
            opt = self.net.net_options
            self.opt = darknet_sgd(self.net, opt.get_float("momentum", 0.9), opt.get_float("decay", 0.0001),
                                   s.batch)
        else:
            self.opt = torch.optim.Adam(self.net.parameters(), lr=s.learning_rate, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
        self.sampler = self._sampler()
        self.loader = self._loader()
        self._it = None
        if ckpt is not None:
            self._restore(ckpt)

    def _sampler(self) -> DarknetSizes:
        s, rt = self.s, self.rt
        sampler = DarknetSizes(len(self.dataset), self.minibatch, seed=s.seed, every=s.every * s.subdivisions,
                               sizes=s.sizes if len(s.sizes) > 1 else None, size=s.sizes[0], rank=rt.rank,
                               world_size=rt.world, final=self._final if self.darknet else None)
        if sampler.batches_per_epoch < 1:
            raise TrainError(f"{s.data}: {len(self.dataset)} images make no batch of {self.minibatch} "
                             f"per rank on {rt.world} rank(s)")
        return sampler

    def _final(self, minibatch: int) -> bool:
        """Darknet's `get_current_batch(net)+200 > max_batches` at the resize drawn at this minibatch."""
        s = self.s
        batch_num = (self.seen_start + minibatch // s.subdivisions * self.step_images) // s.batch
        return batch_num + s.final_batches > s.max_batches

    def _loader(self):
        w, cuda = self.rt.workers, self.rt.device.type == "cuda"
        if w:
            import cv2

            cv2.setNumThreads(1)  # before the fork: inside a forked worker it can deadlock
        return DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=w,
                          worker_init_fn=worker_init if w else None, pin_memory=cuda,
                          persistent_workers=w > 0, prefetch_factor=4 if w else None)

    def _restore(self, ckpt: dict) -> None:
        self.opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        p = ckpt["progress"]
        if p["n_images"] != len(self.dataset):
            raise TrainError(f"{self.out / CHECKPOINT}: the run trained on {p['n_images']} images, "
                             f"{self.s.data} now has {len(self.dataset)}")
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], p["epoch"], p["batch_in_epoch"]
        self.avg_loss, self.elapsed, self.seen_start = p["avg_loss"], p["elapsed"], p["seen_start"]
        # the policy the run started with, even if the cfg's [net] was edited since
        fields = p["schedule"].items()
        self.schedule = Schedule(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})
        set_rng_state(ckpt["rng"])

    # ---- one iteration

    @property
    def batch_num(self) -> int:
        """Darknet's get_current_batch: seen // (batch*subdivisions) (batch here is the full batch)."""
        return self.seen // self.s.batch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (images, truths) on the device, crossing epochs (data order: epoch, batch index)."""
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                self._it = iter(self.loader)
            try:
                images, truths, _ = next(self._it)
            except StopIteration:
                self._it, self.epoch, self.batch_in_epoch = None, self.epoch + 1, 0
                continue
            self.batch_in_epoch += 1
            fmt = torch.channels_last if self.rt.device.type == "cuda" else torch.contiguous_format
            return (images.to(self.rt.device, non_blocking=True, memory_format=fmt),
                    truths.to(self.rt.device, non_blocking=True))

    def iteration(self) -> dict:
        """`subdivisions` forwards and backwards, then one update; returns the log row."""
        s, rt, t = self.s, self.rt, now()
        acc = torch.zeros(7, device=rt.device)
        for sub in range(s.subdivisions):
            images, truths = self.next_batch()
            self.seen += images.shape[0] * rt.world  # darknet: seen += batch *before* the forward
            sync = rt.world == 1 or sub == s.subdivisions - 1
            with nullcontext() if sync else self.model.no_sync():
                with autocast(rt):
                    logits = self.model(images)
                loss = self.loss_fn(logits, truths, self.seen)  # summed over the images
                scale = 1.0 if self.darknet else 1.0 / (self.minibatch * s.subdivisions)
                self.scaler.scale(loss * scale).backward()
            acc += stats_vector(loss.detach(), self.loss_fn.stats)
        v = all_sum(acc, rt).tolist()  # the iteration's one host-device synchronisation
        loss = v[0] / self.step_images
        if not finite(loss):
            raise TrainError(f"loss is {loss} at batch {self.batch_num} (iteration {self.step + 1}, seen "
                             f"{self.seen}); stopped before the update. Lower the learning rate or check "
                             f"the data; the last checkpoint is {self.out / CHECKPOINT}")
        self.update()
        self.avg_loss = loss if self.avg_loss < 0 else 0.9 * self.avg_loss + 0.1 * loss  # darknet's avg
        dt = now() - t
        self.elapsed += dt
        n = max(v[6], 1.0)
        return {"step": self.step, "batch": self.batch_num, "seen": self.seen, "epoch": self.epoch,
                "size": images.shape[-1], "lr": self.rate, "loss": loss, "avg_loss": self.avg_loss,
                "avg_iou": v[1] / n, "class": v[2] / n, "obj": v[3] / n,
                "no_obj": v[5] / (s.subdivisions * rt.world), "avg_recall": v[4] / n, "count": int(v[6]),
                "images_per_s": self.step_images / dt, "time": self.elapsed}

    def update(self) -> None:
        """Darknet's update_network: the rate at the current batch_num, then the optimizer step."""
        rate = self.schedule.rate(self.batch_num)
        if self.darknet:
            self.rate = rate * self.rt.world  # darknet -gpus: learning_rate *= ngpus
            set_rate(self.opt, self.rate, self.s.batch)
        else:
            self.rate = rate
            set_rate(self.opt, rate)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    # ---- files

    def save(self) -> None:
        """Checkpoint and darknet weights, atomically, by rank 0 only."""
        if not self.rt.main:
            return
        self.net.seen = self.seen
        progress = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "avg_loss": self.avg_loss,
                    "elapsed": self.elapsed, "seen_start": self.seen_start, "n_images": len(self.dataset),
                    "schedule": dataclasses.asdict(self.schedule)}
        ckpt = make_checkpoint(fingerprint=self.fingerprint, model=self.net.state_dict(),
                               optimizer=self.opt.state_dict(), scaler=self.scaler.state_dict(),
                               seen=self.seen, step=self.step, progress=progress,
                               settings=dataclasses.asdict(self.s))
        atomic_save(ckpt, self.out / CHECKPOINT)
        self.save_weights(self.out / f"{Path(self.s.cfg).stem}_last.weights")

    def save_weights(self, path: Path) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        self.net.save_weights(tmp)
        os.replace(tmp, path)
        return path

    def run(self) -> TrainResult:
        s, rt = self.s, self.rt
        log = open_log(self.out / LOG, LOG_FIELDS, self.step) if rt.main else None
        if rt.main:
            (self.out / SETTINGS).write_text(json_dumps(dataclasses.asdict(s)))
        bar = tqdm(total=s.max_batches, initial=min(self.batch_num, s.max_batches), disable=not rt.progress,
                   unit="batch", dynamic_ncols=True)
        images0, t0 = self.seen, now()
        try:
            while self.batch_num < s.max_batches:
                before = self.batch_num
                row = self.iteration()
                if log:
                    log.write(",".join(_fmt(row[k]) for k in LOG_FIELDS) + "\n")
                bar.update(min(self.batch_num, s.max_batches) - before)
                bar.set_postfix_str(postfix(row), refresh=False)
                if self.step % s.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
            if log:
                log.close()
        self.save()
        wall = now() - t0
        final = self.out / f"{Path(s.cfg).stem}_final.weights"
        plot = None
        if rt.main:
            self.save_weights(final)
            plot = plot_log(read_log(self.out / LOG), self.out / PLOT)
        return TrainResult(self.out, final, self.out / CHECKPOINT, self.out / LOG, plot, self.seen,
                           self.batch_num, wall, (self.seen - images0) / max(wall, 1e-9))


def postfix(row: dict) -> str:
    """The progress bar's text: loss, darknet's avg, diagnostics, speed, size."""
    return (f"loss {row['loss']:.3g} avg {row['avg_loss']:.3g} iou {row['avg_iou']:.2f} recall "
            f"{row['avg_recall']:.2f} obj {row['obj']:.2f} {row['images_per_s']:.1f} img/s {row['size']}px")


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"


def json_dumps(obj) -> str:
    return json.dumps(obj, indent=1) + "\n"


def finite(x: float) -> bool:
    return math.isfinite(x)


def autocast(rt: Runtime):
    """Mixed precision on CUDA (bf16 or fp16), nothing on CPU."""
    dtype = rt.amp_dtype
    return torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()


def now() -> float:
    return time.perf_counter()


# --------------------------------------------------------------------------- public API


def train(cfg: str | Path, data: str | Path, out_dir: str | Path, *, recipe: str = "darknet",
          loader: str | None = None, sets: list | None = None, names: str | None = None,
          max_batches: int | None = None, batch: int | None = None, subdivisions: int | None = None,
          sizes: list[int] | None = None, learning_rate: float | None = None, seed: int = 0,
          weights: str | None = None, pretrained: str | None = None, partial: int | None = None,
          clear: bool = False, checkpoint_every: int = 100, final_batches: int = 200,
          device: str | None = None, workers: int | None = None, resume: bool = False,
          force: bool = False, progress: bool = True, amp: bool = True,
          eval_set: str | None = None) -> TrainResult:
    """Train `cfg` on the VOC-layout dataset at `data`, writing the run to `out_dir`.

    Writes `checkpoint.pt` (every `checkpoint_every` iterations and at the end), `<cfg>_final.weights`
    (darknet format), `log.csv` (one row per iteration, :func:`read_log`), `loss.png` and `run.json`.
    `resume=True` continues the run in `out_dir` exactly, with the settings it was started with.
    eval_set (`2007:test`): afterwards, rank 0 measures the VOC07 mAP there (:func:`voc_map`, at the
    cfg's width) and writes `eval.json`.
    """
    s = Settings(str(cfg_path(cfg)), str(data), recipe, loader, [list(p) for p in sets] if sets else None,
                 names, max_batches, batch, subdivisions, list(sizes) if sizes else None, learning_rate, seed,
                 weights=weights, pretrained=pretrained, partial=partial, clear=clear,
                 checkpoint_every=checkpoint_every, final_batches=final_batches)
    rt = init_runtime(device, workers, progress, amp)
    out = Path(out_dir)
    try:
        if rt.main:
            prepare_run_dir(out, resume, force)
        if rt.world > 1:
            dist.barrier()
        result = Trainer(s, rt, out, resume).run()
        if eval_set and rt.main:
            result.map = evaluate_run(result, eval_set, rt.device)
        return result
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def cfg_path(cfg: str | Path) -> Path:
    """A cfg path, or the shipped cfg of that name (`yolov2-tiny-synth`), as `Darknet(cfg)` accepts."""
    p = Path(cfg)
    if p.exists() or p.parent != Path(".") or p.suffix not in ("", ".cfg"):
        return p
    try:
        return stock_cfg(p.name)
    except CfgError:
        raise CfgError(f"{cfg}: cfg file not found (nor a shipped cfg of that name)") from None


def voc_map(net, data: str | Path, image_set: str = "2007:test", names: list[str] | None = None,
            size: int | None = None, device: str | torch.device | None = None, batch_size: int = 16):
    """VOC07 mAP (a `yolov2.evaluate.EvalResult`) of `net` on a VOC image set, as darknet's `valid` sees
    it (letterbox, thresh .005, NMS .45 on pixel boxes) at `size` (default: the cfg's width)."""
    (year, iset), = parse_sets(image_set)
    annotations = load_annotations(data, year, iset)
    names = names or class_names(Path(data))
    ids, folder = list(annotations), Path(data) / f"VOC{year}" / "JPEGImages"
    width, height = net.width, net.height
    net.width = net.height = size or width  # the network runs at any multiple of 32
    try:
        detector = Detector(net, thresh=0.005, relative=False, device=device)
        dets = {}
        for k in range(0, len(ids), batch_size):
            chunk = ids[k:k + batch_size]
            dets.update(zip(chunk, detector([load_image(folder / f"{i}.jpg") for i in chunk]), strict=True))
    finally:
        net.width, net.height = width, height
    return evaluate_detections(annotations, results_from_detections(dets, names), names, "voc07")


def evaluate_run(result: TrainResult, eval_set: str, device: torch.device) -> float:
    """mAP of a finished run's final weights on `eval_set`; writes `eval.json` beside them."""
    s = json.loads((result.out_dir / SETTINGS).read_text())
    net = Darknet(s["cfg"])
    net.load_weights(result.weights)
    ev = voc_map(net, s["data"], eval_set, class_names(Path(s["data"]), s["names"]), device=device)
    summary = {"image_set": eval_set, "metric": "voc07", **ev.to_json()}
    (result.out_dir / EVAL).write_text(json_dumps(summary))
    return ev.map


def class_names(root: Path, names: str | None = None) -> list[str]:
    """The class list: `names`, else `root/classes.names`, else the 20 VOC classes."""
    names = names or (str(root / "classes.names") if (root / "classes.names").is_file() else None)
    return read_class_names(names) if names else list(VOC_CLASSES)


# --------------------------------------------------------------------------- CLI


def _arg(parse: Callable[[str], list]) -> Callable[[str], list]:
    """An argparse `type` that shows the parser's own message for a bad value."""
    def wrapped(text: str) -> list:
        try:
            return parse(text)
        except TrainError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return wrapped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolov2 train", description=__doc__.split("\n")[0],
                                epilog="Several GPUs: torchrun --nproc_per_node=K -m yolov2 train ...")
    p.add_argument("cfg", help="darknet .cfg (a path, or a shipped name such as yolov2-tiny-voc)")
    p.add_argument("data", help="VOC devkit root (holds VOC2007/, VOC2012/)")
    p.add_argument("--out", required=True, help="run directory (checkpoint, weights, log)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="darknet")
    p.add_argument("--loader", choices=("detection", "region"),
                   help="augmentation: darknet's load_data_detection or the port's crop-jitter loader")
    p.add_argument("--sets", type=_arg(parse_sets), help="image sets, default 2007:trainval,2012:trainval "
                   "(only those present)")
    p.add_argument("--names", help="class names file (default DATA/classes.names, else the 20 VOC classes)")
    p.add_argument("--max-batches", type=int, help="stop at this darknet batch number")
    p.add_argument("--batch", type=int, help="images per update (darknet's batch; per GPU for darknet)")
    p.add_argument("--subdivisions", type=int, help="forwards per update (gradient accumulation)")
    p.add_argument("--sizes", type=_arg(parse_sizes), help="training sizes: 416, 256,288 or 320-608 "
                   "(default: 320-608 with [region] random=1, else the cfg's width)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="base learning rate")
    p.add_argument("--seed", type=int, default=0)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", help="start from a full darknet .weights (keeps its seen)")
    start.add_argument("--pretrained", help="start from a darknet backbone (with --partial N)")
    p.add_argument("--partial", type=int, help="load only the layers before N from --pretrained")
    p.add_argument("--clear", action="store_true", help="reset seen to 0 after loading --weights")
    p.add_argument("--checkpoint-every", type=int, default=100, help="iterations between checkpoints")
    p.add_argument("--final-batches", type=int, default=200,
                   help="train the last N batches at the largest size, as darknet (default 200; 0: off)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=int, help="data loader processes per rank")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-amp", action="store_true", help="full float32 on CUDA")
    p.add_argument("--eval", dest="eval_set", metavar="YEAR:SET",
                   help="afterwards, the VOC07 mAP on this image set (e.g. 2007:test)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    kw = vars(args)
    out, progress, amp = kw.pop("out"), not kw.pop("no_progress"), not kw.pop("no_amp")
    if (kw["pretrained"] is None) != (kw["partial"] is None):
        print("train: --pretrained and --partial go together", file=sys.stderr)
        return 2
    try:
        r = train(out_dir=out, progress=progress, amp=amp, **kw)
    except (TrainError, CheckpointError, CfgError, ValueError, OSError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to batch {r.batches} (seen {r.seen}) in {r.elapsed:.1f} s, "
              f"{r.images_per_s:.1f} images/s\nweights: {r.weights}\nlog: {r.log}")
        if r.map is not None:
            print(f"mAP (VOC07) on {args.eval_set}: {r.map:.4f}")
    return 0
