"""Two CPU processes under torchrun (gloo): they train together and rank 0 alone writes the run.

Darknet's `-gpus` semantics for the darknet recipe: each rank runs the cfg's full batch, `seen`
counts both ranks' images (so batch_num advances by 2 per update) and the rate is doubled. The
adam recipe splits its batch over the ranks instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import narrow_cfg_with_tiny_schedule

from yolov2.darknet.cfg import stock_cfg
from yolov2.data.synth import make_synthetic_voc
from yolov2.train.command import read_log

SYNTH = stock_cfg("yolov2-tiny-synth")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", 8, 0, seed=2)


def torchrun(voc: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cfg = narrow_cfg_with_tiny_schedule(out.parent)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "yolov2", "train", str(cfg), str(voc), "--out", str(out),
           "--device", "cpu", "--workers", "0", "--sizes", "64", "--no-progress", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(("recipe", "seen", "batches"), [
    ("darknet", [8, 16], [2, 4]),  # 2 ranks x batch 4 per update; batch_num = seen // 4
    ("adam", [4, 8, 12, 16], [1, 2, 3, 4]),  # batch 4 split into 2 + 2
])
def test_two_ranks_train_and_rank0_writes_one_checkpoint(voc, tmp_path, recipe, seen, batches):
    out = tmp_path / "run"
    r = torchrun(voc, out, "--recipe", recipe, "--batch", "4", "--subdivisions", "2", "--max-batches", "4",
                 "--checkpoint-every", "1000")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "log.csv", "loss.png", "run.json", "yolov2-tiny-synth_final.weights",
        "yolov2-tiny-synth_last.weights"]
    assert r.stdout.count("trained to batch") == 1  # the summary is rank 0's alone
    log = read_log(out / "log.csv")
    assert list(log["seen"]) == seen and list(log["batch"]) == batches
    if recipe == "darknet":  # tiny's steps: .1 of 0.001 until batch 100, times 2 ranks
        assert log["lr"] == pytest.approx([2e-4, 2e-4], rel=1e-5)
