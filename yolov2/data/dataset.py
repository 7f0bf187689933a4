"""Detection dataset, darknet's multi-scale batches (`random=1`) and the collate the loss expects.

References: darknet `examples/detector.c` (`train_detector`: every 10 batches a new square size
`(rand() % 10 + 10) * 32`), `src/data.c` (`load_data_detection`/`load_data_region`: truths as
`(x, y, w, h, id)` rows, 30 per image, zero-padded). The transforms are `yolov2.data.augment`'s.

Reproducibility: every random number of sample `index` in epoch `epoch` comes from a generator
seeded by `(seed, epoch, index)`; the image order and the sizes are pure functions of `(seed, epoch,
batch)`. So a run gives the same batches with any number of workers, on every rank, and after a
resume from any batch. (Darknet's own 608-px final 200 batches are not forced here.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from yolov2.data.augment import EvalTransform
from yolov2.data.image import read_image
from yolov2.data.labels import record_labels
from yolov2.data.voc import DatasetError, Record, check_image_size

MAX_BOXES = 30  # darknet's truth cap per image (the loss's T)
MULTISCALE_SIZES = tuple(range(320, 609, 32))  # (rand() % 10 + 10) * 32
# The tag in second place keeps the three seeded streams apart (numpy's SeedSequence ignores
# trailing zeros, so lengths alone would not).
_SIZE, _ORDER, _SAMPLE = 1, 2, 3


class Sample(NamedTuple):
    """What the batch sampler hands the dataset: which image, at which size, in which epoch."""

    index: int
    size: int
    epoch: int = 0


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of every random number sample `index` uses in `epoch`."""
    return np.random.default_rng((seed, _SAMPLE, epoch, index))


def multiscale_size(seed: int, batch: int, every: int = 10, sizes: Sequence[int] = MULTISCALE_SIZES) -> int:
    """Network size of global batch `batch`: a new uniform draw from `sizes` every `every` batches.

    Like darknet (count starts at 0, so batch 0 already draws). A pure function of (seed, batch // every),
    so every rank and every resumed run sees the same sequence.
    """
    return int(sizes[np.random.default_rng((seed, _SIZE, batch // every)).integers(len(sizes))])


class DetectionDataset(Dataset):
    """Images and darknet truths: item -> (image (3, S, S) float32 RGB in [0, 1], truth (30, 5), index).

    `augment` (a `yolov2.data.augment.Augmenter`) makes training samples; without it darknet's test
    transform (`EvalTransform`: resize_image, or letterbox_image with `letterbox`) makes S x S and the
    truth holds the non-difficult boxes mapped the same way.
    Items are ints (size `size`, epoch 0) or `Sample(index, size, epoch)` from MultiScaleBatchSampler.
    Truth rows are normalised centre-size `(x, y, w, h, class)`, zero rows after the last box.
    """

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        augment=None,
        size: int = 416,
        letterbox: bool = False,
        seed: int = 0,
        max_boxes: int = MAX_BOXES,
    ) -> None:
        self.records = list(records)
        self.classes = tuple(classes)
        self.labels = [record_labels(r, self.classes) for r in self.records]  # each (K, 5)
        self.augment, self.size, self.letterbox = augment, size, letterbox
        self.seed, self.max_boxes = seed, max_boxes
        self.transform = augment if augment is not None else EvalTransform(letterbox, max_boxes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | Sample | tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
        if isinstance(item, (int, np.integer)):
            index, size, epoch = int(item), self.size, 0
        else:
            index, size, epoch = Sample(*item)
        canvas, truth = self.load(index, size, epoch)
        return chw(canvas), torch.from_numpy(truth), index

    def load(self, index: int, size: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` at `size`: canvas (S, S, 3) float32 RGB, truth (max_boxes, 5) `[x, y, w, h, id]`."""
        path = self.records[index].image_path
        try:
            im = read_image(path)  # (H, W, 3) uint8 RGB; the transforms fold in darknet's /255
        except (OSError, ValueError) as e:
            if path in str(e):
                raise
            raise DatasetError(f"{path}: cannot load image: {e}") from e
        if self.records[index].annotation is not None:  # the labels were normalised by the XML's <size>
            check_image_size(self.records[index].annotation, im, path)
        canvas, truth = self.transform(
            im, self.labels[index], size, size, sample_rng(self.seed, epoch, index)
        )
        return np.asarray(canvas, np.float32), np.asarray(truth, np.float32)


def chw(canvas: np.ndarray) -> torch.Tensor:
    """An (S, S, 3) canvas as the (3, S, S) image tensor, a permuted view of the same memory (no copy)."""
    return torch.from_numpy(canvas).permute(2, 0, 1)


def collate(batch: list, pool: bool = False, memory_format: torch.memory_format = torch.channels_last,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of dataset items -> images (N, 3, S, S), truths (N, 30, 5), indices (N,) int64.

    memory_format is the layout the consumer wants. channels_last (the default): the images are
    stacked in (N, S, S, 3) order, one memcpy per canvas, and handed on as the (N, 3, S, S) view of
    that memory. contiguous_format (the CPU float32 trainer): each (S, S, 3) canvas is transposed
    straight into its (3, S, S) plane of the batch, the one pass the trainer would otherwise make
    after the transfer, so in a DataLoader it is paid in the worker, not in the trainer's process.
    In a DataLoader worker the stack is written straight into shared memory (as torch's
    default_collate does), so sending it to the trainer copies nothing more.

    The pixels stay float32: darknet's loader resamples bilinearly and distorts in HSV, so they are
    not multiples of 1/255 and a uint8 transfer would change the network's input
    (tests/test_dataset.py, test_canvas_is_not_uint8_exact).

    pool (in a worker, float32 images): write into one of the worker's reusable shared buffers, which
    the consumer must take with :func:`take_batch`, which gives them back (the CPU trainer does).
    """
    images, truths, indices = zip(*batch, strict=True)
    nchw = memory_format == torch.contiguous_format
    if memory_format not in (torch.channels_last, torch.contiguous_format):
        raise ValueError(f"collate: memory_format {memory_format}; channels_last or contiguous_format")
    # (3, S, S) views each, stacked as planes, or (S, S, 3) each (contiguous when from chw())
    parts = list(images) if nchw else [im.permute(1, 2, 0) for im in images]
    out = None
    if get_worker_info() is not None:
        first, numel = parts[0], sum(x.numel() for x in parts)
        if pool and first.dtype == torch.float32 and first.device.type == "cpu":
            out = _pooled_out(numel, first).view(len(parts), *first.shape)
        else:
            storage = first._typed_storage()._new_shared(numel, device=first.device)
            out = first.new(storage).resize_(len(parts), *first.shape)
    stacked = torch.stack(parts, out=out)  # (N, 3, S, S) or (N, S, S, 3)
    stacked = stacked if nchw else stacked.permute(0, 3, 1, 2)
    return stacked, torch.stack(truths), torch.tensor(indices, dtype=torch.int64)


# A worker's reusable batch buffers (collate(..., pool=True)): each a shared float32 storage whose first
# _HEADER values are [_MAGIC, busy, ...] and whose images follow (64 bytes in, so they stay aligned).
# Writing a batch into fresh shared memory costs more than making it (first-touching each page: about
# 2 ms per 416x416 image on a 2-core VM against 0.3 ms into reused memory); a buffer is written again
# only after its consumer released it (take_batch), so a batch still in use stays intact.
_HEADER, _MAGIC, POOL_SLOTS = 16, -(2.0**120), 8  # the magic is exact in float32
_pool: list[torch.UntypedStorage] = []  # this worker process's buffers (empty in the main process)


def _pooled_out(numel: int, like: torch.Tensor) -> torch.Tensor:
    """(numel,) float32 in a free pool buffer of this worker, marked busy; a fresh unpooled shared
    block when all POOL_SLOTS are busy."""
    need = (_HEADER + numel) * 4
    free = [k for k, st in enumerate(_pool) if _header(st)[1] == 0]
    fit = [k for k in free if _pool[k].nbytes() >= need]
    if fit:
        k = fit[0]
    elif free or len(_pool) < POOL_SLOTS:  # replace a free one that is too small, or add one
        st = like.new_empty(0).untyped_storage()._new_shared(need)
        if free:
            k = free[0]
            _pool[k] = st
        else:
            k = len(_pool)
            _pool.append(st)
        _header(st)[0] = _MAGIC
    else:
        st = like.new_empty(0).untyped_storage()._new_shared(numel * 4)
        return torch.empty(0, dtype=torch.float32).set_(st, 0, (numel,))
    st = _pool[k]
    _header(st)[1] = 1
    return torch.empty(0, dtype=torch.float32).set_(st, _HEADER, (numel,))


def _header(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, (_HEADER,))


def _pooled(images: torch.Tensor) -> bool:
    """Whether `images` is a batch in a worker's pool buffer (collate(..., pool=True))."""
    st = images.untyped_storage()
    return (images.dtype == torch.float32 and images.device.type == "cpu" and images.storage_offset()
            == _HEADER and st.nbytes() >= _HEADER * 4 and float(_header(st)[0]) == _MAGIC)


def _uses(storage: torch.UntypedStorage) -> int:
    """How many tensors (views, numpy arrays over them and autograd's saved inputs included) and
    storage objects hold `storage`."""
    return torch._C._storage_Use_Count(storage._cdata)


class PoolConsumer:
    """The consuming process's side of the workers' pool buffers: batches used in place, and the
    last `limit` buffers kept mapped.

    A batch that is already on the CPU in the layout the consumer wants is handed out in place, with
    no copy (:func:`take_batch`); its buffer goes back to its worker only once nothing holds it any
    more: no tensor, view, numpy array or autograd graph (torch's count of its users, checked at each
    later take_batch and by :meth:`release`). A consumer that keeps a batch keeps it intact; its worker
    meanwhile writes into its other buffers, or into fresh shared memory when all are in use.

    A batch arrives as a handle to its shared buffer, which this process maps; torch finds a buffer
    it still holds under the same mapping when it comes back (its shared-storage cache), so holding
    the last `limit` keeps their pages mapped (without it every batch is mapped afresh and its pages
    faulted in again). A buffer that left its worker's pool (replaced by a larger one) is let go after
    `limit` other batches, so the extra shared memory is bounded by `limit` buffers.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"PoolConsumer: limit {limit}; hold at least one buffer")
        self.limit = limit
        self._mapped: OrderedDict[int, torch.UntypedStorage] = OrderedDict()
        self._lent: dict[int, torch.UntypedStorage] = {}  # handed out in place, not yet released

    @property
    def lent(self) -> int:
        """Buffers handed out in place that are still held somewhere."""
        return len(self._lent)

    @property
    def mapped(self) -> int:
        return len(self._mapped)

    def release(self) -> int:
        """Give back to their workers the lent buffers nothing holds any more; -> how many."""
        done = [k for k, st in self._lent.items()
                if _uses(st) == 1 + (k in self._mapped and self._mapped[k] is not st)]
        for k in done:
            _header(self._lent.pop(k))[1] = 0
        return len(done)

    def _map(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        self._mapped[key] = storage
        self._mapped.move_to_end(key)
        while len(self._mapped) > self.limit:
            self._mapped.popitem(last=False)

    def _lend(self, storage: torch.UntypedStorage) -> None:
        self._lent[storage.data_ptr()] = storage


def take_batch(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format,
               non_blocking: bool = False, consumer: PoolConsumer | None = None) -> torch.Tensor:
    """`images` on `device` in `memory_format`; a batch from a worker's pool buffer (collate(...,
    pool=True)) gives its buffer back to the worker.

    Without `consumer` the batch is copied into memory of its own and its buffer released at once.
    With one, a batch already on the CPU in `memory_format` is used in place and its buffer released
    when nothing holds it any more (:class:`PoolConsumer`); one that needs a copy (another device or
    layout) is copied and released at once. Any tensor not from a pool is only moved.
    """
    if consumer is not None:
        consumer.release()  # the batches handed out before, now that their users let them go
    pooled = _pooled(images)
    out = images.to(device, non_blocking=non_blocking and not pooled, memory_format=memory_format)
    if pooled:
        st = images.untyped_storage()
        in_place = out.untyped_storage().data_ptr() == st.data_ptr()
        if consumer is not None:
            consumer._map(st)
            if in_place:
                consumer._lend(st)
                return out
        elif in_place:
            out = out.clone(memory_format=memory_format)
        _header(st)[1] = 0
    return out


class MultiScaleBatchSampler(Sampler):
    """Batches of `Sample(index, size, epoch)` with darknet's multi-scale sizes, sharded over ranks.

    Each epoch a permutation seeded by (seed, epoch) (or 0..n-1 without `shuffle`) is cut to a multiple
    of world_size (drop_last) or padded by wrapping (as DistributedSampler does), and rank r takes
    every world_size-th index from r. All ranks have the same number of batches, and batch b of epoch e
    has size `multiscale_size(seed, e * batches_per_epoch + b)` on all of them (`sizes=None`: always
    `size`). `set_epoch(e, start_batch)` starts epoch e at batch `start_batch` for exact resume.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int = 0,
        every: int = 10,
        sizes: Sequence[int] | None = MULTISCALE_SIZES,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        size: int = 416,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size < 1 or every < 1 or dataset_len < world_size:
            raise ValueError(f"bad sampler: {dataset_len} images, batch {batch_size}, {world_size} ranks")
        self.dataset_len, self.batch_size, self.seed, self.every = dataset_len, batch_size, seed, every
        self.sizes, self.shuffle, self.drop_last = sizes, shuffle, drop_last
        self.rank, self.world_size, self.size = rank, world_size, size
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch `epoch`'s order, starting at its batch `start_batch` (0 <= it <= batches_per_epoch)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} not in [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def per_rank(self) -> int:
        """Images each rank sees per epoch."""
        if self.drop_last:
            return self.dataset_len // self.world_size
        return math.ceil(self.dataset_len / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        return (
            self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)
        )

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def size_of(self, epoch: int, batch: int) -> int:
        """Network size of batch `batch` of `epoch`."""
        if self.sizes is None:
            return self.size
        return multiscale_size(self.seed, epoch * self.batches_per_epoch + batch, self.every, self.sizes)

    def rank_indices(self, epoch: int) -> np.ndarray:
        """This rank's image indices for `epoch`, in order: (per_rank,)."""
        n = self.dataset_len
        order = (
            np.random.default_rng((self.seed, _ORDER, epoch)).permutation(n) if self.shuffle else np.arange(n)
        )
        total = self.per_rank * self.world_size
        order = order[:total] if total <= n else np.concatenate([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[Sample]]:
        idx, bs = self.rank_indices(self.epoch), self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            size = self.size_of(self.epoch, b)
            yield [Sample(int(i), size, self.epoch) for i in idx[b * bs : (b + 1) * bs]]


def worker_init(worker_id: int) -> None:
    """DataLoader worker setup: one torch thread each (the workers are the parallelism).

    OpenCV's thread count is set in the parent before the fork (see `make_loader`): calling
    `cv2.setNumThreads` inside a forked worker can deadlock on a pool lock inherited from the parent.
    """
    torch.set_num_threads(1)


def make_loader(
    dataset: DetectionDataset, sampler: MultiScaleBatchSampler, num_workers: int = 0
) -> DataLoader:
    """A DataLoader of (images (N, 3, S, S), truths (N, 30, 5), indices (N,)) batches."""
    if num_workers:
        import cv2

        cv2.setNumThreads(1)  # inherited by the forked workers; the workers are the parallelism
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=worker_init if num_workers else None,
        persistent_workers=False,
    )
