"""The Trainer fed batches held in memory (`Trainer.from_batches`): darknet's counters and update rule.

Oracles: darknet's `train_network_datum` as ../shared/golden/train_step/README.md states it (seen +=
batch before the forward, update where (seen/batch) % subdivisions == 0, batch_num = seen/(batch*
subdivisions), gradients summed over the subdivisions and divided by batch*subdivisions), written
out by hand for the cases below; and the equality of S accumulated forwards with one big one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_truths

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.train.checkpoint import read_log
from yolov2.train.command import build_parser
from yolov2.train.schedule import Schedule
from yolov2.train.settings import TrainError
from yolov2.train.trainer import Trainer

SYNTH = stock_cfg("yolov2-tiny-synth")  # 5 classes, batch norm, [net]: lr .02, burn_in 100


def batches(n: int, images: int, size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches of `images` random images with 1-3 random boxes each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(images, 3, size, size, generator=g)
        truth = random_truths(images, g)
        out.append((x, truth))
    return out


def start_weights(folder: Path, seen: int, cfg: Path = SYNTH) -> Path:
    net = Darknet(cfg)
    net.seen = seen
    net.save_weights(folder / "start.weights")
    return folder / "start.weights"


def no_batch_norm_cfg(folder: Path) -> Path:
    path = folder / "synth-nobn.cfg"  # gradients of S forwards add up exactly only without batch norm
    path.write_text(SYNTH.read_text().replace("batch_normalize=1", "batch_normalize=0"))
    return path


def test_seen_update_and_rate_follow_darknet(tmp_path):
    # B=2, S=2, seen_start=3 (not a multiple of 4): darknet updates at seen 5, 9, 13 (seen/2 even)
    t = Trainer.from_batches(SYNTH, batches(5, 2), weights=start_weights(tmp_path, 3), batch=4,
                             subdivisions=2)
    assert t.seen == 3 and t.minibatch == 2
    forwards = [t.train_datum() for _ in range(5)]
    assert [f.seen for f in forwards] == [5, 7, 9, 11, 13]
    assert [f.updated for f in forwards] == [True, False, True, False, True]
    assert [f.batch_num for f in forwards] == [1, 1, 2, 2, 3]  # seen // 4
    # burn_in=100, power=4: lr * (batch_num/100)^4, in float32
    want = [float(np.float32(np.float32(0.02) * (np.float32(b) / np.float32(100)) ** 4.0))
            for b in (1, 1, 2, 2, 3)]
    assert [f.rate for f in forwards] == want
    assert t.step == 3 and t.rate == want[-1]


def test_an_iteration_is_the_forwards_up_to_an_update(tmp_path):
    t = Trainer.from_batches(SYNTH, batches(3, 2), weights=start_weights(tmp_path, 3), batch=4,
                             subdivisions=2)
    seen = []
    hook = t.loss_fn.register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    rows = [t.iteration() for _ in range(3)]
    hook.remove()
    assert seen == [5, 7, 9, 11, 13]  # one forward, then two, then two (the list starts over)
    assert [(r["step"], r["seen"], r["batch"]) for r in rows] == [(1, 5, 1), (2, 9, 2), (3, 13, 3)]
    assert t.epoch == 1  # the three batches ran out once


def test_subdivisions_sum_their_gradients(tmp_path):
    # darknet: S forwards of B images add their gradients; the update divides by N = B*S. So two
    # forwards of 2 images give the update of one forward of 4 (a net without batch norm).
    cfg = no_batch_norm_cfg(tmp_path)
    weights = start_weights(tmp_path, 0, cfg)
    (x, truth), = batches(1, 4)
    split = Trainer.from_batches(cfg, [(x[:2], truth[:2]), (x[2:], truth[2:])], weights=weights, batch=4,
                                 subdivisions=2)
    whole = Trainer.from_batches(cfg, [(x, truth)], weights=weights, batch=4, subdivisions=1)
    for t in (split, whole):
        t.schedule = Schedule(learning_rate=0.5)  # constant, large enough to move every weight
        t.iteration()
    assert split.step == whole.step == 1 and split.seen == whole.seen == 4
    start = Darknet(cfg)
    start.load_weights(weights)
    for a, b, p in zip(split.net.parameters(), whole.net.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
        assert (a - p).abs().max() > 1e-4  # the update did move it


def test_unsigned_steps_switch(tmp_path):
    # yolov2-tiny-voc's steps=-1,100,...: the cfg's meaning is 0.1x before batch 100; the final
    # darknet's unsigned comparison keeps the base rate
    voc = stock_cfg("yolov2-tiny-voc")
    data = batches(1, 1, size=416)
    cfg_rate = Trainer.from_batches(voc, data, batch=1, subdivisions=1).train_datum().rate
    quirk = Trainer.from_batches(voc, data, batch=1, subdivisions=1, unsigned_steps=True)
    assert quirk.schedule.unsigned_steps and quirk.train_datum().rate == float(np.float32(0.001))
    assert cfg_rate == float(np.float32(np.float32(0.001) * np.float32(0.1)))
    args = build_parser().parse_args([str(voc), "VOCdevkit", "--out", "run", "--unsigned-steps"])
    assert args.unsigned_steps and not build_parser().parse_args([str(voc), "x", "--out", "r"]).unsigned_steps


def test_run_writes_a_run_directory(tmp_path):
    t = Trainer.from_batches(SYNTH, batches(2, 2), weights=start_weights(tmp_path, 0), out=tmp_path / "run",
                             batch=4, subdivisions=2, max_batches=3, checkpoint_every=2)
    (tmp_path / "run").mkdir()
    result = t.run()
    log = read_log(result.log)
    assert log["batch"].tolist() == [1, 2, 3] and log["seen"].tolist() == [4, 8, 12]
    final = Darknet(SYNTH)
    final.load_weights(result.weights)
    assert final.seen == 12 and result.checkpoint.is_file()


def test_without_a_run_directory_nothing_is_written(tmp_path):
    t = Trainer.from_batches(SYNTH, batches(1, 1), batch=1, subdivisions=1)
    t.iteration()
    with pytest.raises(TrainError, match="no run directory"):
        t.save()
    with pytest.raises(TrainError, match="give the trainer one"):
        t.run()
    path = t.save_weights(tmp_path / "x.weights")  # an explicit path is fine
    net = Darknet(SYNTH)
    net.load_weights(path)
    assert net.seen == 1


@pytest.mark.parametrize(("make", "message"), [
    (lambda: [(torch.rand(3, 3, 64, 64), torch.zeros(3, 30, 5))], r"batch 0 .*takes batch/subdivisions = 2"),
    (lambda: [(torch.rand(2, 3, 64, 64), torch.zeros(2, 30, 4))], r"\(2, T, 5\) truths"),
    (lambda: [(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.zeros(2, 30, 5))], "give floats"),
    (lambda: [(torch.rand(2, 3, 60, 64), torch.zeros(2, 30, 5))], "multiples of 32"),
    (lambda: [torch.rand(2, 3, 64, 64)], r"expected an \(images, truths\) pair, got Tensor"),
    (lambda: [], "ran out at seen 0: it gave no batches"),
    (lambda: iter(batches(1, 2)), "ran out at seen 2: an iterator that ended"),  # one-shot
])
def test_bad_batches_are_clear_errors(make, message):
    t = Trainer.from_batches(SYNTH, make(), batch=2, subdivisions=1)
    with pytest.raises(TrainError, match=message):
        for _ in range(3):
            t.train_datum()


def test_bad_truth_values_name_the_row():
    truth = torch.zeros(1, 30, 5)
    truth[0, 0] = torch.tensor([0.5, 0.5, 1.5, 0.2, 1])
    t = Trainer.from_batches(SYNTH, [(torch.rand(1, 3, 64, 64), truth)], batch=1, subdivisions=1)
    with pytest.raises(ValueError, match=r"truth\[0, 0\].*w outside"):
        t.train_datum()
