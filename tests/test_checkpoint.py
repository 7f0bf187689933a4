"""Checkpoints: atomic writes, weights_only loads, refusals with clear messages, RNG round trips."""

from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pytest
import torch

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.train.checkpoint import (
    CheckpointError,
    atomic_save,
    cfg_fingerprint,
    load_checkpoint,
    make_checkpoint,
    prepare_run_dir,
    rng_state,
    set_rng_state,
)
from yolov2.train.command import main as train_main
from yolov2.train.schedule import Schedule
from yolov2.train.settings import Settings, resolve

SYNTH = stock_cfg("yolov2-tiny-synth")


@pytest.fixture(scope="module")
def net():
    return Darknet(SYNTH)


def checkpoint_of(net, fingerprint=None) -> dict:
    """A well-formed checkpoint, as Trainer.save writes one (every field load_checkpoint checks)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    progress = {"epoch": 0, "batch_in_epoch": 2, "avg_loss": 1.5, "elapsed": 0.5, "seen_start": 0,
                "n_images": 12, "schedule": dataclasses.asdict(Schedule(0.001, "constant", max_batches=10))}
    settings = resolve(Settings(str(SYNTH), "data", batch=64, sizes=[416]), net, 12, 1)
    return make_checkpoint(fingerprint=fingerprint or cfg_fingerprint(SYNTH), model=net.state_dict(),
                           optimizer=opt.state_dict(), seen=128, step=2, progress=progress,
                           settings=dataclasses.asdict(settings))


def test_round_trip_is_weights_only(tmp_path, net):
    path = atomic_save(checkpoint_of(net), tmp_path / "c.pt")
    ckpt = load_checkpoint(path, cfg_fingerprint(SYNTH), net.state_dict())
    assert ckpt["seen"] == 128 and ckpt["step"] == 2
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_old_checkpoint(tmp_path, net):
    path = atomic_save(checkpoint_of(net), tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        atomic_save({"bad": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize(("payload", "message"), [
    (b"garbage, not a zip file", "corrupt or not a yolov2 checkpoint"),
    ("truncated", "corrupt or not a yolov2 checkpoint"),
    ("code", "corrupt or not a yolov2 checkpoint"),  # pickled code is refused by weights_only
    ("foreign", "not a yolov2 training checkpoint"),
])
def test_corrupt_or_foreign_files_are_refused(tmp_path, net, payload, message):
    path = tmp_path / "c.pt"
    if payload == "truncated":
        atomic_save(checkpoint_of(net), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif payload == "code":
        torch.save({"format": "yolov2-train-checkpoint", "x": random.Random(0)}, path)
    elif payload == "foreign":
        torch.save({"state_dict": net.state_dict()}, path)
    else:
        path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(path, cfg_fingerprint(SYNTH), net.state_dict())
    assert str(path) in str(e.value)


def test_other_cfg_is_refused(tmp_path, net):
    path = atomic_save(checkpoint_of(net), tmp_path / "c.pt")
    tiny = Darknet(stock_cfg("yolov2-tiny-voc"))
    with pytest.raises(CheckpointError, match="written for another network"):
        load_checkpoint(path, cfg_fingerprint(stock_cfg("yolov2-tiny-voc")), tiny.state_dict())


def test_mismatched_tensors_are_refused(tmp_path, net):
    ckpt = checkpoint_of(net)
    key = next(k for k in ckpt["model"] if k.endswith("conv.weight"))
    ckpt["model"][key] = ckpt["model"][key][:1]
    path = atomic_save(ckpt, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(path, cfg_fingerprint(SYNTH), net.state_dict())


def test_fingerprint_is_about_layers(tmp_path):
    text = SYNTH.read_text()
    same = tmp_path / "same.cfg"
    edited = re.sub(r"learning_rate=[0-9.]+", "learning_rate=0.5", text)  # [net] is not layers
    assert edited != text
    same.write_text("# a comment\n" + edited)
    other = tmp_path / "other.cfg"
    other.write_text(text.replace("filters=128", "filters=96", 1))
    assert cfg_fingerprint(same) == cfg_fingerprint(SYNTH)
    assert cfg_fingerprint(other) != cfg_fingerprint(SYNTH)


def test_rng_round_trip(tmp_path):
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    path = atomic_save({"rng": state}, tmp_path / "r.pt")
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


# --------------------------------------------------------------------------- the run directory


def test_run_directory_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("step\n1\n")
    args = [str(SYNTH), str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]
    assert train_main(args) == 1
    assert "already holds a run (log.csv)" in capsys.readouterr().err
    assert (out / "log.csv").read_text() == "step\n1\n"
    prepare_run_dir(out, resume=False, force=True)  # --force deletes what a run recorded, and nothing else
    assert (out / "log.csv").read_text() == "step\n1\n"
    (out / "run.json").write_text('{"files": ["run.json", "log.csv"]}')
    (out / "mine.txt").write_text("the user's")
    prepare_run_dir(out, resume=False, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    args = [str(SYNTH), str(tmp_path), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu"]
    assert train_main(args) == 1
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["corrupt", "other_cfg"])
def test_resume_refuses_bad_checkpoints(tmp_path, capsys, net, bad):
    out = tmp_path / "run"
    if bad == "corrupt":
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(b"\x00" * 100)
    else:
        atomic_save(checkpoint_of(net), out / "checkpoint.pt")
    cfg = SYNTH if bad == "corrupt" else stock_cfg("yolov2-tiny-voc")
    assert train_main([str(cfg), str(tmp_path), "--out", str(out), "--resume", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert ("corrupt" if bad == "corrupt" else "written for another network") in err
    assert str(out / "checkpoint.pt") in err
