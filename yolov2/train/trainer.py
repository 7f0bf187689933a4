"""The training loop: darknet's `train_detector` iterations, on one device or on several with DDP.

Reference: darknet examples/detector.c (`train_detector`), src/network.c (`train_network_datum`,
`update_network`, `train_networks` and `sync_nets` for `-gpus`).

One forward is darknet's `train_network_datum` (:meth:`Trainer.train_datum`): `seen` grows by the
forward's batch/subdivisions images on every rank first (darknet: `*net->seen += net->batch` before
`forward_network`) and the loss gets that value, so the `seen < 12800` prior switches off where
darknet's does; forward and backward add to the gradients; the update runs on the forward after
which seen/(batch/subdivisions) is a multiple of `subdivisions` (:func:`update_due`). One
*iteration* is the forwards up to and including an update: `subdivisions` of them, fewer the first
time when the run starts at a seen that is not a multiple of the batch. batch_num = seen // batch
drives the rate and the stop at `max_batches`. The run's settings and recipes:
:mod:`yolov2.train.settings`.

The (images, truths) come from the VOC devkit of `Settings.data` through a DataLoader, or from a
*batch source*, any iterable of (images, truths) pairs held in memory (:meth:`Trainer.from_batches`):
darknet's recipe on given tensors, with no dataset on disk.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from yolov2.darknet.layers import check_input
from yolov2.darknet.model import Darknet
from yolov2.data.augment import Augmenter
from yolov2.data.darknet_data import is_data_file, load_split
from yolov2.data.dataset import (
    POOL_SLOTS,
    DetectionDataset,
    MultiScaleBatchSampler,
    PoolConsumer,
    collate,
    take_batch,
    worker_init,
)
from yolov2.data.voc import load_voc
from yolov2.loss.region_loss import PART_KEYS, RegionLoss, RegionStats, loss_terms
from yolov2.train.checkpoint import (
    CHECKPOINT,
    LOG,
    PLOT,
    atomic_save,
    cfg_fingerprint,
    check_optimizer_state,
    load_checkpoint,
    make_checkpoint,
    open_log,
    plot_log,
    read_log,
    run_outputs,
    set_rng_state,
    write_run_record,
)
from yolov2.train.runtime import (
    Runtime,
    all_sum,
    autocast,
    check_amp,
    check_resume_precision,
    now,
    precision,
    seed_everything,
)
from yolov2.train.schedule import Schedule, darknet_sgd, set_rate, update_due
from yolov2.train.settings import (
    RECIPES,
    Settings,
    TrainError,
    TrainInterrupted,
    TrainResult,
    cfg_path,
    check_batches_left,
    class_names,
    make_schedule,
    resolve,
    resume_settings,
)


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


# The log's columns before the loss split by rule was added (an older log.csv: still read and resumed)
LOG_FIELDS_V1 = ("step", "batch", "seen", "epoch", "size", "lr", "loss", "avg_loss", "avg_iou", "class",
                 "obj", "no_obj", "avg_recall", "count", "images_per_s", "time")
LOG_FIELDS = (*LOG_FIELDS_V1, *PART_KEYS)  # + the loss per image split by rule (region_loss.rule_parts)
STATS = 7 + len(PART_KEYS)  # the length of a stats_vector


def stats_vector(loss: torch.Tensor, stats) -> torch.Tensor:
    """(12,) sums that add over forwards and ranks: loss, iou·n, class·n, obj·n, recall·n, no_obj, n,
    then the loss's parts by rule (PART_KEYS)."""
    t, parts = stats.tensors, stats.parts
    n = t["count"].to(loss.dtype)
    per = [torch.nan_to_num(t[k].to(loss.dtype)) * n for k in ("avg_iou", "class", "obj", "avg_recall")]
    split = [parts[k].to(loss.dtype) for k in PART_KEYS]
    return torch.stack([loss, *per, t["no_obj"].to(loss.dtype), n, *split])


@dataclass
class Forward:
    """What one forward did (:meth:`Trainer.train_datum`, darknet's `train_network_datum`).

    seen, batch_num: the counters after it (seen includes its images); rate: darknet's
    `get_current_rate` at that batch_num, the rate the update used when `updated`; loss: the region
    loss summed over its images (0-d); logits: the head's output (N, A*(5+C), H, W) and grad the
    gradient backpropagated from it (minus darknet's region delta after the logistic gradient;
    scaled by 1/batch in the Adam recipe); truths (N, T, 5) as the loss read them; stats: darknet's
    printed `Region Avg IOU...` diagnostics of the forward.
    """

    seen: int
    batch_num: int
    rate: float
    updated: bool
    loss: torch.Tensor
    logits: torch.Tensor
    grad: torch.Tensor
    truths: torch.Tensor
    stats: RegionStats


class Trainer:
    """One run: model, optimizer, schedule, data order and the counters darknet keeps (seen, batch_num).

    batches: a batch source in place of the VOC devkit, an iterable of (images (B, C, H, W) floats
    in [0, 1], truths (B, T, 5) rows `x, y, w, h, class`) with B = batch/subdivisions images each;
    a re-iterable one (a list) starts over when it ends, a one-shot iterator ends the run with an
    error. See :meth:`from_batches`.
    """

    def __init__(self, s: Settings, rt: Runtime, out: Path | None, resume: bool,
                 batches: Iterable | None = None):
        self.rt, self.out, self.batches = rt, out, batches
        self.fingerprint = cfg_fingerprint(s.cfg)
        seed_everything(s.seed or 0)  # on resume the checkpoint's generator states replace these
        self.net = Darknet(s.cfg)
        ckpt = None
        if resume:  # the run's settings win, but for the paths (which may move) and a new --max-batches
            ckpt = load_checkpoint(out / CHECKPOINT, self.fingerprint, self.net.state_dict())
            check_resume_precision(out / CHECKPOINT, ckpt.get("precision"), rt, rt.new_precision)
            s = resume_settings(Settings(**ckpt["settings"]), s, out / CHECKPOINT)
        self.seen = self._load_start(s) if ckpt is None else ckpt["seen"]
        if batches is not None and s.recipe == "adam" and not s.max_batches:
            raise TrainError("the adam recipe counts its max_batches in epochs of a dataset; with a batch "
                             "source give max_batches")
        self.dataset = self._dataset(s) if batches is None else None
        self.n_images = len(self.dataset) if batches is None else None  # None: a batch source's
        self.s = s = resolve(s, self.net, self.n_images or 0, rt.world)
        check_batches_left(out / CHECKPOINT if ckpt is not None else s.weights, self.batch_num, s.max_batches,
                           resumed=ckpt is not None)
        self.darknet = RECIPES[s.recipe]["optimizer"] == "sgd"
        per_rank = s.batch // rt.world if RECIPES[s.recipe]["split_batch"] else s.batch
        self.minibatch = per_rank // s.subdivisions  # images per forward on each rank
        self.step_images = self.minibatch * s.subdivisions * rt.world
        self.schedule = make_schedule(s, self.net)
        self.step, self.epoch, self.batch_in_epoch, self.avg_loss, self.elapsed = 0, 0, 0, -1.0, 0.0
        self.seen_start = self.seen
        self._build(ckpt)

    @classmethod
    def from_batches(cls, cfg: str | Path, batches: Iterable, *, weights: str | Path | None = None,
                     out: str | Path | None = None, device: str | torch.device = "cpu",
                     amp: bool = False, **settings) -> Trainer:
        """A trainer whose forwards take their (images, truths) from `batches`, no dataset on disk.

        cfg: a cfg path or a shipped cfg's name; weights: a darknet `.weights` to start from (its
        header's seen too, as darknet; `clear=True` resets it); out: the run directory for
        :meth:`run` and :meth:`save` (None: nothing is written); amp: mixed precision, CUDA bf16/fp16
        or CPU bf16 autocast (off: float32, darknet's arithmetic; CPU bf16 needs AVX512-BF16 or AMX).
        `settings` are the other :class:`Settings` fields, e.g. `batch`, `subdivisions`, `unsigned_steps`.
        The batch source is described in the class's docstring; drive it with :meth:`train_datum`
        (one forward), :meth:`iteration` or :meth:`run`.
        """
        s = Settings(str(cfg_path(cfg)), "", weights=str(weights) if weights else None, **settings)
        rt = Runtime(torch.device(device), progress=False, amp=amp)
        return cls(s, rt, Path(out) if out is not None else None, resume=False, batches=batches)

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
        if is_data_file(root):  # a darknet .data file: its train= list and YOLO label files
            classes = class_names(root, s.names)
            if len(classes) != self.net.region.classes:
                raise TrainError(f"{s.cfg}: [region] classes={self.net.region.classes}, but the dataset has "
                                 f"{len(classes)} class names ({s.names or root})")
            return self._augmented(load_split(root, "train", len(classes)), classes, s)
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
        return self._augmented(load_voc(root, [tuple(p) for p in sets], classes), classes, s)

    def _augmented(self, records, classes, s: Settings):
        opt = self.net.net_options
        aug = Augmenter(kind=s.loader or RECIPES[s.recipe]["loader"], jitter=self.net.region.jitter,
                        hue=opt.get_float("hue", 0), saturation=opt.get_float("saturation", 1),
                        exposure=opt.get_float("exposure", 1))
        return DetectionDataset(records, classes, augment=aug, seed=s.seed)

    def _build(self, ckpt: dict | None) -> None:
        s, rt = self.s, self.rt
        check_amp(rt)
        self.net.to(rt.device, memory_format=rt.memory_format)
        if ckpt is not None:
            self.net.load_state_dict(ckpt["model"])
        self.model = self.net
        if rt.world > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        checked = self.batches is None  # the loader's truths are checked already, not the caller's
        self.loss_fn = RegionLoss.from_region(self.net.region, validate=not checked).to(rt.device)
        if self.darknet:
            opt = self.net.net_options
            self.opt = darknet_sgd(self.net, opt.get_float("momentum", 0.9), opt.get_float("decay", 0.0001),
                                   s.batch)
        else:
            self.opt = torch.optim.Adam(self.net.parameters(), lr=s.learning_rate, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
        if self.batches is None:
            self.sampler = self._sampler()
            self.loader = self._loader()
        # the workers' batches are used in place and their buffers stay mapped (dataset.PoolConsumer)
        self._pool = PoolConsumer(max(rt.workers, 1) * POOL_SLOTS)
        self._it = None
        # what the forwards since the last update add up to: stats_vector sums, images, forwards
        self._acc, self._images, self._forwards = torch.zeros(STATS, device=rt.device), 0, 0
        self._terms = 0  # the loss terms summed since the last update (region_loss.split_bound)
        self.stop_requested = False  # set (e.g. by a Stop button): run() ends at the next update
        self.rate = self.current_rate()
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
        # on the CPU the workers reuse their shared batch buffers (next_batch copies out and releases);
        # on CUDA the pinned copy is the batch and the buffers are fresh each time
        return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=w,
                          collate_fn=partial(collate, pool=not cuda, memory_format=self.rt.memory_format),
                          worker_init_fn=worker_init if w else None, pin_memory=cuda,
                          persistent_workers=w > 0, prefetch_factor=4 if w else None)

    def _restore(self, ckpt: dict) -> None:
        check_optimizer_state(self.out / CHECKPOINT, ckpt["optimizer"], self.opt)
        self.opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        p = ckpt["progress"]
        if p["n_images"] != self.n_images:
            raise TrainError(f"{self.out / CHECKPOINT}: the run trained on {p['n_images']} images, "
                             f"{self.s.data or 'the batch source'} now has {self.n_images}")
        if self.batches is None and p["batch_in_epoch"] > self.sampler.batches_per_epoch:
            raise TrainError(f"{self.out / CHECKPOINT}: batch {p['batch_in_epoch']} of an epoch of "
                             f"{self.sampler.batches_per_epoch} batches")
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], p["epoch"], p["batch_in_epoch"]
        self.avg_loss, self.elapsed, self.seen_start = p["avg_loss"], p["elapsed"], p["seen_start"]
        # the policy the run started with, even if the cfg's [net] was edited since
        fields = p["schedule"].items()
        self.schedule = Schedule(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})
        self.schedule = dataclasses.replace(self.schedule, max_batches=self.s.max_batches)  # a longer run
        set_rng_state(ckpt["rng"])

    # ---- one iteration

    @property
    def batch_num(self) -> int:
        """Darknet's get_current_batch: seen // (batch*subdivisions) (batch here is the full batch)."""
        return self.seen // self.s.batch

    def current_rate(self) -> float:
        """Darknet's get_current_rate at the current batch_num (times the ranks for darknet -gpus)."""
        rate = self.schedule.rate(self.batch_num)
        return rate * self.rt.world if self.darknet else rate

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (images, truths) on the device, crossing epochs (data order: epoch, batch index)."""
        if self.batches is not None:
            return self._given_batch()
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
            return (take_batch(images, self.rt.device, self.rt.memory_format, non_blocking=True,
                               consumer=self._pool),
                    truths.to(self.rt.device, non_blocking=True))

    def _given_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch source's next (images, truths), checked, on the device."""
        for attempt in range(2):
            if self._it is None:
                self._it = iter(self.batches)
            try:
                item = next(self._it)
                break
            except StopIteration:  # a list starts over; an exhausted iterator stays empty
                if attempt or self.batch_in_epoch == 0:
                    raise TrainError(f"the batch source ran out at seen {self.seen}: "
                                     + ("it gave no batches" if not attempt else "an iterator that "
                                        "ended (a list, or any re-iterable, starts over instead)")) from None
                self._it, self.epoch, self.batch_in_epoch = None, self.epoch + 1, 0
        where = f"batch {self.batch_in_epoch} of the batch source (epoch {self.epoch})"
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TrainError(f"{where}: expected an (images, truths) pair, got {type(item).__name__}")
        images, truths = (torch.as_tensor(x) for x in item)
        if not images.is_floating_point():
            raise TrainError(f"{where}: images are {images.dtype}; give floats in [0, 1]")
        try:
            check_input(images, self.net.channels, self.net.stride)
        except ValueError as e:
            raise TrainError(f"{where}: {e}") from None
        if images.shape[0] != self.minibatch or truths.dim() != 3 or truths.shape[0] != self.minibatch \
                or truths.shape[2] != 5:
            raise TrainError(f"{where}: images {tuple(images.shape)} and truths {tuple(truths.shape)}; a "
                             f"forward takes batch/subdivisions = {self.minibatch} images and "
                             f"({self.minibatch}, T, 5) truths")
        self.batch_in_epoch += 1
        fmt = self.rt.memory_format
        return (images.to(self.rt.device, torch.float32, memory_format=fmt),
                truths.to(self.rt.device, torch.float32))

    def train_datum(self) -> Forward:
        """One forward and backward, and the update where darknet's rule puts one.

        Darknet's `train_network_datum`: seen grows by the forward's images (all ranks) first, the
        loss reads that seen, the gradients add up over forwards (the loss is a sum), and the
        update runs when :func:`update_due` holds: every `subdivisions` forwards, fewer the first
        time if the run started at a seen that is not a multiple of the batch.
        """
        s, rt = self.s, self.rt
        images, truths = self.next_batch()
        self.seen += images.shape[0] * rt.world  # darknet: seen += batch *before* the forward
        due = update_due(self.seen, self.minibatch * rt.world, s.subdivisions)
        with nullcontext() if rt.world == 1 or due else self.model.no_sync():
            with autocast(rt):
                logits = self.model(images)
            logits.retain_grad()  # the region delta the backward sends in (kept for the record)
            loss = self.loss_fn(logits, truths, self.seen)  # summed over the images
            scale = 1.0 if self.darknet else 1.0 / (self.minibatch * s.subdivisions)
            self.scaler.scale(loss * scale).backward()
        stats = self.loss_fn.stats
        self._acc += stats_vector(loss.detach(), stats)
        self._images, self._forwards = self._images + images.shape[0] * rt.world, self._forwards + 1
        self._terms += loss_terms(logits.shape, self.net.region.num, truths.shape[1]) * rt.world
        if due:
            self._sums = self._checked_update()
        return Forward(self.seen, self.batch_num, self.current_rate(), due, loss.detach(), logits.detach(),
                       logits.grad, truths, stats)

    def _checked_update(self) -> tuple[list[float], int, int]:
        """The update, unless a loss since the last one is not finite: (summed stats, images, forwards)."""
        v = all_sum(self._acc, self.rt).tolist()  # the update's one host-device synchronisation
        sums = (v, self._images, self._forwards)
        self.terms = self._terms  # of the last update's loss
        self._acc.zero_()
        self._images = self._forwards = self._terms = 0
        loss = v[0] / sums[1]
        if not finite(loss):
            where = self.out / CHECKPOINT if self.out else "not written (no run directory)"
            raise TrainError(f"loss is {loss} at batch {self.batch_num} (iteration {self.step + 1}, seen "
                             f"{self.seen}); stopped before the update. Lower the learning rate or check "
                             f"the data; the last checkpoint is {where}")
        self.update()
        return sums

    def iteration(self) -> dict:
        """Forwards (:meth:`train_datum`) up to and including the next update; returns the log row."""
        rt, t = self.rt, now()
        while not (f := self.train_datum()).updated:
            pass
        v, images, forwards = self._sums  # summed over the update's forwards and the ranks
        loss = v[0] / images
        self.avg_loss = loss if self.avg_loss < 0 else 0.9 * self.avg_loss + 0.1 * loss  # darknet's avg
        dt = now() - t
        self.elapsed += dt
        n = max(v[6], 1.0)
        return {"step": self.step, "batch": self.batch_num, "seen": self.seen, "epoch": self.epoch,
                "size": f.logits.shape[-1] * self.net.stride, "lr": self.rate, "loss": loss,
                "avg_loss": self.avg_loss, "avg_iou": v[1] / n, "class": v[2] / n, "obj": v[3] / n,
                "no_obj": v[5] / (forwards * rt.world), "avg_recall": v[4] / n, "count": int(v[6]),
                "images_per_s": images / dt, "time": self.elapsed,
                **{k: v[7 + i] / images for i, k in enumerate(PART_KEYS)}, "terms": self.terms}

    def update(self) -> None:
        """Darknet's update_network: the rate at the current batch_num, then the optimizer step."""
        self.rate = self.current_rate()  # darknet -gpus: learning_rate *= ngpus
        set_rate(self.opt, self.rate, self.s.batch if self.darknet else 1)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    # ---- files

    def save(self) -> None:
        """Checkpoint and darknet weights, atomically, by rank 0 only."""
        if not self.rt.main:
            return
        if self.out is None:
            raise TrainError("this trainer has no run directory (out=None): nothing to save to")
        progress = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "avg_loss": self.avg_loss,
                    "elapsed": self.elapsed, "seen_start": self.seen_start, "n_images": self.n_images,
                    "schedule": dataclasses.asdict(self.schedule)}
        ckpt = make_checkpoint(fingerprint=self.fingerprint, model=self.net.state_dict(),
                               optimizer=self.opt.state_dict(), scaler=self.scaler.state_dict(),
                               seen=self.seen, step=self.step, progress=progress,
                               settings=dataclasses.asdict(self.s), precision=precision(self.rt))
        atomic_save(ckpt, self.out / CHECKPOINT)
        self.save_weights(self.out / f"{Path(self.s.cfg).stem}_last.weights")

    def save_weights(self, path: str | Path) -> Path:
        """The model as a darknet `.weights` file, its header's seen the trainer's, written atomically."""
        path = Path(path)
        self.net.seen = self.seen
        self.net.save_weights(path)  # atomic (yolov2.files)
        return path

    def run(self, on_row: Callable[[dict], None] | None = None) -> TrainResult:
        """Iterations up to max_batches, a log row each, checkpoints every `checkpoint_every` and at the
        end. on_row(row) is called after each row is logged (a live view: yolov2.book.training_view).
        `stop_requested` set (by on_row or another thread) ends the run at the next iteration
        boundary: the checkpoint is written, `stopped` is True in the result and no `_final.weights`
        is written (the run continues with --resume)."""
        s, rt = self.s, self.rt
        if self.out is None:
            raise TrainError("run() writes a run directory: give the trainer one (out=...)")
        log = open_log(self.out / LOG, LOG_FIELDS, self.step, (LOG_FIELDS_V1,)) if rt.main else None
        if rt.main:
            write_run_record(self.out, dataclasses.asdict(s), run_outputs(s.cfg))
        bar = tqdm(total=s.max_batches, initial=min(self.batch_num, s.max_batches), disable=not rt.progress,
                   unit="batch", dynamic_ncols=True)
        images0, t0 = self.seen, now()
        try:
            while self.batch_num < s.max_batches and not self.stop_requested:
                before = self.batch_num
                row = self.iteration()
                if log:
                    log.write(",".join(_fmt(row[k]) for k in LOG_FIELDS) + "\n")
                bar.update(min(self.batch_num, s.max_batches) - before)
                bar.set_postfix_str(postfix(row), refresh=False)
                if self.step % s.checkpoint_every == 0:
                    self.save()
                if on_row is not None:
                    on_row(row)
        except KeyboardInterrupt:
            raise TrainInterrupted(f"interrupted at batch {self.batch_num}; continue with --resume (from the "
                                   f"last checkpoint, {self.out / CHECKPOINT})") from None
        finally:
            bar.close()
            if log:
                log.close()
        self.save()
        wall = now() - t0
        stopped = self.batch_num < s.max_batches
        final = self.out / f"{Path(s.cfg).stem}_{'last' if stopped else 'final'}.weights"
        plot = None
        if rt.main:
            if not stopped:
                self.save_weights(final)
            plot = plot_log(read_log(self.out / LOG), self.out / PLOT)
        return TrainResult(self.out, final, self.out / CHECKPOINT, self.out / LOG, plot, self.seen,
                           self.batch_num, wall, (self.seen - images0) / max(wall, 1e-9), stopped=stopped)


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
