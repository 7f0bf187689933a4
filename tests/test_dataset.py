"""DetectionDataset, collate and darknet's multi-scale batch sampler."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from yolov2.data import labels, synth, voc
from yolov2.data.augment import Augmenter
from yolov2.data.dataset import (
    MULTISCALE_SIZES,
    DetectionDataset,
    MultiScaleBatchSampler,
    Sample,
    collate,
    make_loader,
    multiscale_size,
)
from yolov2.data.image import ImageError, letterbox_image, load_image, resize_image


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = synth.make_synthetic_voc(tmp_path_factory.mktemp("ds") / "synth", 8, 0, seed=3)
    return voc.load_voc(root, [("2007", "train")], synth.SYNTH_CLASSES, cache=False)


def augmenter():
    return Augmenter("detection", jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5)


def expected_truth(record, mapping=lambda x, y, w, h: (x, y, w, h)):
    rows = labels.darknet_label_rows(record.annotation, synth.SYNTH_CLASSES)
    truth = np.zeros((30, 5), np.float32)
    for t, (cls, *box) in enumerate(rows):
        truth[t] = (*mapping(*box), cls)
    return truth


def test_test_time_resize(records):
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, size=320)
    image, truth, index = ds[2]
    assert index == 2 and image.dtype == torch.float32 and image.shape == (3, 320, 320)
    reference = resize_image(load_image(records[2].image_path), 320, 320)  # (H, W, 3)
    torch.testing.assert_close(image, torch.from_numpy(reference).permute(2, 0, 1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(truth.numpy(), expected_truth(records[2]), atol=1e-6)


def test_test_time_letterbox_maps_boxes_by_hand(records):
    r = records[0]
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, size=416, letterbox=True)
    image, truth, _ = ds[0]
    w, h = r.annotation.width, r.annotation.height
    scale = min(416 / w, 416 / h)
    new_w, new_h = int(w * scale + 1e-9), int(h * scale + 1e-9)  # letterbox_image's integer sizes
    dx, dy = (416 - new_w) // 2, (416 - new_h) // 2

    def mapping(x, y, bw, bh):  # centre-size in the image -> in the 416 x 416 canvas
        return (x * new_w + dx) / 416, (y * new_h + dy) / 416, bw * new_w / 416, bh * new_h / 416

    np.testing.assert_allclose(truth.numpy(), expected_truth(r, mapping), atol=1e-5)
    letterboxed = letterbox_image(load_image(r.image_path), 416, 416)
    torch.testing.assert_close(image, torch.from_numpy(letterboxed).permute(2, 0, 1), atol=1e-6, rtol=0)


def test_augmented_samples_are_seeded_by_seed_epoch_index(records):
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=5)
    a, b = ds[Sample(1, 352, 0)], ds[Sample(1, 352, 0)]
    assert a[0].shape == (3, 352, 352) and a[1].shape == (30, 5)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    c = ds[Sample(1, 352, 1)]
    assert not torch.equal(a[0], c[0])
    other_seed = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=6)[Sample(1, 352, 0)]
    assert not torch.equal(a[0], other_seed[0])
    # the boxes survive: as many as the image has (small jitter keeps all five-or-fewer shapes in view)
    n = (a[1][:, 2] > 0).sum().item()
    assert 1 <= n <= len(expected_truth(records[1]).nonzero()[0])


def test_image_without_objects_has_an_empty_truth(records):
    empty = dataclasses.replace(records[0], annotation=dataclasses.replace(records[0].annotation, objects=[]))
    for augment in (None, augmenter()):
        image, truth, _ = DetectionDataset([empty], synth.SYNTH_CLASSES, augment, size=320)[0]
        assert image.shape == (3, 320, 320) and not truth.any()


def test_truth_is_capped_at_30(records):
    many = dataclasses.replace(records[0], labels=np.tile([[1, 0.5, 0.5, 0.2, 0.2]], (40, 1)))
    _, truth, _ = DetectionDataset([many], synth.SYNTH_CLASSES, size=320)[0]
    assert truth.shape == (30, 5) and (truth[:, 4] == 1).all()


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_bad_images_name_the_file(records, tmp_path, damage):
    path = tmp_path / "000000.jpg"
    shutil.copy(records[0].image_path, path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an image at all")
    ds = DetectionDataset([dataclasses.replace(records[0], image_path=str(path))], synth.SYNTH_CLASSES)
    with pytest.raises((OSError, ImageError, voc.DatasetError), match=str(path)):
        ds[0]


def test_collate(records):
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter())
    images, truths, indices = collate([ds[Sample(i, 320, 0)] for i in (3, 0, 5)])
    assert images.shape == (3, 3, 320, 320) and truths.shape == (3, 30, 5)
    assert indices.tolist() == [3, 0, 5] and indices.dtype == torch.int64
    torch.testing.assert_close(truths[1], ds[Sample(0, 320, 0)][1])


def test_collate_keeps_each_canvas_bit_for_bit_in_a_channels_last_batch(records):
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=2)
    items = [ds[Sample(i, 352, 0)] for i in (1, 4)]
    images, _, _ = collate(items)
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
    for k, i in enumerate((1, 4)):
        canvas, _ = ds.load(i, 352, 0)  # (S, S, 3): what darknet's load_data_detection makes
        assert np.array_equal(images[k].permute(1, 2, 0).numpy(), canvas)


def test_collate_in_nchw_is_the_same_batch_contiguous(records):
    """memory_format=contiguous_format (the CPU float32 trainer's layout) transposes each canvas into
    its planes: the same values, NCHW-contiguous; any other layout is refused in one line."""
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=2)
    items = [ds[Sample(i, 320, 0)] for i in (2, 6, 1)]
    nchw, truths, indices = collate(items, memory_format=torch.contiguous_format)
    nhwc, truths2, indices2 = collate(items)
    assert nchw.is_contiguous() and nchw.shape == (3, 3, 320, 320)
    assert torch.equal(nchw, nhwc) and torch.equal(truths, truths2) and torch.equal(indices, indices2)
    with pytest.raises(ValueError, match="memory_format"):
        collate(items, memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("kind", ["detection", "region", "test"])
def test_canvas_is_not_uint8_exact(records, kind):
    """Why the workers send float32: darknet's loaders resample bilinearly (and distort in HSV), so the
    pixels are not k/255 and a uint8 transfer, converted back on the device, would move them."""
    aug = None if kind == "test" else Augmenter(kind, jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5)
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, aug, seed=2)
    canvas, _ = ds.load(0, 320, 0)
    as_uint8 = np.round(canvas * 255).astype(np.uint8)
    back = torch.from_numpy(as_uint8).float().div(255).numpy()  # the device-side conversion
    moved = back != canvas
    assert moved.mean() > 0.5  # most pixels would change (by up to half a grey level)
    assert np.abs(back - canvas).max() <= 0.5 / 255 + 1e-7


def test_loader_is_the_same_with_any_number_of_workers(records):
    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=1)
    sampler = MultiScaleBatchSampler(len(ds), 2, seed=1, every=2)
    runs = [list(make_loader(ds, sampler, workers)) for workers in (0, 2)]
    assert len(runs[0]) == 4
    assert [b[0].shape[-1] for b in runs[0]] == [sampler.size_of(0, b) for b in range(4)]
    for one, two in zip(*runs, strict=True):
        for x, y in zip(one, two, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_pooled_batches_are_the_inline_ones_and_reused_only_once_released(records):
    """collate(pool=True) in a worker writes into buffers the worker reuses: take_batch copies a batch
    out and releases its buffer; a batch nobody released is never written over."""
    from functools import partial

    from torch.utils.data import DataLoader

    from yolov2.data.dataset import POOL_SLOTS, take_batch

    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=1)
    sampler = MultiScaleBatchSampler(len(ds), 2, seed=1, every=2)
    inline = [b[0] for b in make_loader(ds, sampler, 0)] * 3  # three epochs of 4 batches

    def loader(epochs: int):
        dl = DataLoader(ds, batch_sampler=sampler, collate_fn=partial(collate, pool=True), num_workers=1,
                        persistent_workers=True, prefetch_factor=2)
        for _ in range(epochs):
            yield from dl

    kept = [b[0] for b in loader(3)]  # held, never released: 12 batches > POOL_SLOTS buffers
    assert len(kept) == 12 > POOL_SLOTS
    assert all(torch.equal(x, y) for x, y in zip(kept, inline, strict=True))
    storages = []
    taken = []
    for b in loader(3):
        storages.append(b[0].untyped_storage().data_ptr())
        x = take_batch(b[0], torch.device("cpu"), torch.channels_last)
        assert x.untyped_storage().data_ptr() != storages[-1]  # a copy: the buffer can go back
        taken.append(x)
    assert all(torch.equal(x, y) for x, y in zip(taken, inline, strict=True))
    assert len(set(storages)) < len(storages)  # buffers came back (mapped again: their address may move)
    plain = inline[0]
    assert take_batch(plain, torch.device("cpu"), torch.channels_last) is plain  # not pooled: moved only


def test_consumer_uses_worker_batches_in_place_and_gives_back_only_unheld_ones(records):
    """take_batch with a PoolConsumer hands a pooled batch out where its worker wrote it (no copy); its
    buffer goes back only when nothing holds it: a batch kept as a tensor, as a view or as a numpy
    array over it stays intact while its worker goes on; a batch wanted in another layout is copied
    and its buffer given back at once."""
    from functools import partial

    from torch.utils.data import DataLoader

    from yolov2.data.dataset import POOL_SLOTS, PoolConsumer, take_batch

    ds = DetectionDataset(records, synth.SYNTH_CLASSES, augmenter(), seed=1)
    sampler = MultiScaleBatchSampler(len(ds), 2, seed=1, every=2)
    inline = [b[0] for b in make_loader(ds, sampler, 0)] * 3  # three epochs of 4 batches
    dl = DataLoader(ds, batch_sampler=sampler, num_workers=1, persistent_workers=True, prefetch_factor=2,
                    collate_fn=partial(collate, pool=True, memory_format=torch.contiguous_format))
    consumer, cpu, nchw = PoolConsumer(POOL_SLOTS), torch.device("cpu"), torch.contiguous_format
    kept, storages = {}, set()
    for i, b in enumerate(x for _ in range(3) for x in dl):
        x = take_batch(b[0], cpu, nchw, consumer=consumer)
        assert x.data_ptr() == b[0].data_ptr()  # in place
        storages.add(x.untyped_storage().data_ptr())
        if i in (0, 4, 7):  # kept as the tensor, a view, a numpy array over a view
            kept[i] = {0: x, 4: x[1:], 7: x[:, 0].numpy()}[i]
        del b, x
    assert consumer.lent == len(kept) + 1  # the kept ones and the last one (given back at the next take)
    for i, y in kept.items():
        want = {0: inline[0], 4: inline[4][1:], 7: inline[7][:, 0].numpy()}[i]
        assert np.array_equal(np.asarray(y), np.asarray(want))  # not written over
    assert len(storages) <= POOL_SLOTS  # the others' buffers came back and were reused
    assert consumer.mapped == len(storages)  # and stayed mapped: the same address each time
    del y, want
    kept.clear()  # nothing holds them now
    assert consumer.release() == 4 and consumer.lent == 0
    b = next(iter(dl))
    x = take_batch(b[0], cpu, torch.channels_last, consumer=consumer)  # another layout: a copy
    assert x.data_ptr() != b[0].data_ptr() and consumer.lent == 0 and torch.equal(x, inline[0])


# ------------------------------------------------------------------------------ multi-scale sampler


def sizes_of(sampler) -> list[int]:
    batches = list(sampler)
    assert all(len({s.size for s in b}) == 1 for b in batches)  # one size per batch
    return [b[0].size for b in batches]


def test_size_changes_every_10_batches_darknet_style():
    sizes = sizes_of(MultiScaleBatchSampler(2000, 4, seed=0))  # 500 batches, 50 blocks
    blocks = np.array(sizes).reshape(50, 10)
    assert (blocks == blocks[:, :1]).all()  # constant within a block of 10
    assert (blocks[1:, 0] != blocks[:-1, 0]).mean() > 0.7  # and redrawn at each block (1 in 10 repeats)
    assert set(sizes) <= set(MULTISCALE_SIZES) and list(MULTISCALE_SIZES) == [320 + 32 * i for i in range(10)]
    draws = np.array([multiscale_size(0, 10 * b) for b in range(2000)])
    freq = np.array([(draws == s).mean() for s in MULTISCALE_SIZES])
    assert np.abs(freq - 0.1).max() < 0.03  # uniform, as (rand() % 10 + 10) * 32


def test_sizes_continue_across_epochs_and_are_seeded():
    s = MultiScaleBatchSampler(95, 4, seed=3)  # 23 batches per epoch: blocks straddle epochs
    e0 = sizes_of(s)
    s.set_epoch(1)
    e1 = sizes_of(s)
    assert e0 + e1 == [multiscale_size(3, b) for b in range(46)]
    assert e0 != sizes_of(MultiScaleBatchSampler(95, 4, seed=4))
    assert sizes_of(MultiScaleBatchSampler(95, 4, sizes=None, size=416)) == [416] * 23


def test_ranks_share_sizes_and_get_disjoint_shards():
    ranks = [MultiScaleBatchSampler(103, 5, seed=2, rank=r, world_size=3) for r in range(3)]
    batches = [list(s) for s in ranks]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == 103 // 3 // 5
    assert sizes_of(ranks[0]) == sizes_of(ranks[1]) == sizes_of(ranks[2])
    seen = [{s.index for b in bs for s in b} for bs in batches]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # without drop_last every image is seen (DistributedSampler's wrap-around padding)
    full = [MultiScaleBatchSampler(103, 5, seed=2, rank=r, world_size=3, drop_last=False) for r in range(3)]
    assert {s.index for f in full for b in f for s in b} == set(range(103))
    assert [len(f) for f in full] == [7, 7, 7]


def test_epochs_shuffle_and_resume_is_exact():
    s = MultiScaleBatchSampler(64, 4, seed=9)
    s.set_epoch(2)
    whole = list(s)
    assert sorted(i.index for b in whole for i in b) == list(range(64))
    s.set_epoch(2, start_batch=7)
    assert len(s) == 9 and list(s) == whole[7:]
    resumed = MultiScaleBatchSampler(64, 4, seed=9, epoch=2, start_batch=7)
    assert list(resumed) == whole[7:]
    s.set_epoch(3)
    assert [i.index for i in next(iter(s))] != [i.index for i in whole[0]]
    ordered = MultiScaleBatchSampler(10, 5, shuffle=False)
    assert [[i.index for i in b] for b in ordered] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=2, world_size=2), "rank 2"),
        (dict(batch_size=0), "bad sampler"),
        (dict(start_batch=99), "start_batch 99"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleBatchSampler(**{"dataset_len": 20, "batch_size": 4, **kwargs})
