"""The training loop: a step learns, `seen` is darknet's, a killed run resumes exactly, NaN stops.

Runs the narrow cfg (yolov2-tiny-synth) at 64-96 px on a dozen synthetic VOC images, on the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import narrow_cfg_with_tiny_schedule

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.data.synth import make_synthetic_voc
from yolov2.train.checkpoint import cfg_fingerprint
from yolov2.train.command import Runtime, Settings, Trainer, TrainError, read_log, train
from yolov2.train.command import main as train_main

SYNTH = stock_cfg("yolov2-tiny-synth")
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(batch=4, subdivisions=2, sizes=[64, 96], device="cpu", workers=0, progress=False, seed=3)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", 12, 0, seed=5)


def trainer(voc: Path, out: Path, **kw) -> Trainer:
    out.mkdir(parents=True, exist_ok=True)
    cfg = narrow_cfg_with_tiny_schedule(out.parent)
    s = Settings(str(cfg), str(voc), batch=4, subdivisions=2, sizes=[64], seed=3, **kw)
    return Trainer(s, Runtime(torch.device("cpu"), progress=False), out, resume=False)


def test_one_update_reduces_the_loss_on_a_fixed_batch(voc, tmp_path):
    t = trainer(voc, tmp_path, learning_rate=0.01, max_batches=5)
    fixed = t.next_batch()
    t.next_batch = lambda: fixed  # every forward sees the same images
    first = t.iteration()["loss"]  # the loss before the first update...
    second = t.iteration()["loss"]  # ...and after it, on the same batch
    assert second < first * 0.99  # one SGD step lowers it by 13% here; float rounding moves it by ~1e-6


def test_seen_rule_switches_off_at_12800(voc, tmp_path):
    # darknet: seen += 2 (batch/subdivisions) before each forward; the prior pull needs seen < 12800
    net = Darknet(SYNTH)
    net.seen = 12794
    net.save_weights(tmp_path / "start.weights")
    t = trainer(voc, tmp_path / "run", weights=str(tmp_path / "start.weights"), max_batches=3202)
    seen_at_loss = []
    explain = t.loss_fn.explain

    def recording(logits, truth, seen):
        a = explain(logits, truth, seen)
        seen_at_loss.append((seen, bool(a.prior_active)))
        return a

    t.loss_fn.explain = recording
    rows = [t.iteration() for _ in range(2)]
    # 12794 is not a multiple of the batch (4): darknet updates where seen/2 is even, so the first
    # iteration is one forward (seen 12796) and the second two (12798, 12800)
    assert seen_at_loss == [(12796, True), (12798, True), (12800, False)]
    assert [r["batch"] for r in rows] == [12796 // 4, 12800 // 4]  # batch_num = seen // batch


def test_nan_loss_stops_naming_the_batch(voc, tmp_path):
    with pytest.raises(TrainError, match=r"loss is (nan|inf) at batch 2 \(iteration 2"):
        train(SYNTH, voc, tmp_path / "run", max_batches=10, learning_rate=1e12, **SMALL)


def test_read_log_and_result(voc, tmp_path):
    r = train(SYNTH, voc, tmp_path / "run", max_batches=4, checkpoint_every=2, **SMALL)
    log = read_log(r.log)
    assert list(log["batch"]) == [1, 2, 3, 4] and list(log["seen"]) == [4, 8, 12, 16]
    assert r.seen == 16 and r.batches == 4 and r.plot.is_file()
    assert set(log["size"]) <= {64, 96}
    net = Darknet(SYNTH)
    net.load_weights(r.weights)
    assert net.seen == 16  # darknet's header keeps seen


def test_workers_train_exactly_as_inline_with_batches_used_in_place(voc, tmp_path):
    """Two DataLoader workers give the weights one process gives, bit for bit: the batches are the
    same (seeded per sample) and used where the workers wrote them (no copy, dataset.PoolConsumer);
    each buffer goes back to its worker only after its backward, and the run's six iterations
    cross an epoch and a size change."""
    def weights(workers: int, out: Path) -> dict[str, torch.Tensor]:
        kw = {**SMALL, "workers": workers}
        r = train(SYNTH, voc, out, max_batches=6, **kw)
        net = Darknet(SYNTH)
        net.load_weights(r.weights)
        return net.state_dict()

    inline, two = weights(0, tmp_path / "inline"), weights(2, tmp_path / "two")
    assert inline.keys() == two.keys()
    for k in inline:
        torch.testing.assert_close(two[k], inline[k], rtol=0, atol=0, msg=k)


def test_trainer_uses_worker_batches_in_place_and_gives_them_back(voc, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = narrow_cfg_with_tiny_schedule(tmp_path)
    s = Settings(str(cfg), str(voc), batch=4, subdivisions=2, sizes=[64], seed=3, max_batches=20)
    t = Trainer(s, Runtime(torch.device("cpu"), workers=1, progress=False), out, resume=False)
    kept = t.next_batch()[0]
    before = kept.clone()
    for _ in range(4):
        t.train_datum()  # forward, backward and updates on the next batches
    # out: the batch held here and the last one used (given back at the next take); the others went back
    assert t._pool.lent == 2
    torch.testing.assert_close(kept, before, rtol=0, atol=0)  # and it was not written over
    del kept
    t.train_datum()
    assert t._pool.lent == 1  # now only the batch just used (released at the next take)


def run_cli(out: Path, voc: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "yolov2", "train", str(SYNTH), str(voc), "--out", str(out), "--max-batches",
           "24", "--batch", "4", "--subdivisions", "2", "--sizes", "64,96", "--device", "cpu", "--workers",
           "0", "--seed", "7", "--checkpoint-every", "2", "--final-batches", "4", "--no-progress", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(p: subprocess.Popen, out: Path, min_step: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and p.poll() is None:
        log = out / "log.csv"
        if (out / "checkpoint.pt").exists() and log.exists() and len(log.read_text().splitlines()) > min_step:
            return
        time.sleep(0.02)
    pytest.fail(f"no checkpoint before the run ended: {p.communicate()}")


def test_kill_and_resume_equals_no_interruption(voc, tmp_path):
    whole = run_cli(tmp_path / "whole", voc)
    killed = run_cli(tmp_path / "killed", voc)
    wait_for_checkpoint(killed, tmp_path / "killed", min_step=5)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    log = read_log(tmp_path / "killed")
    assert 5 <= len(log["step"]) < 24, "the run was not killed mid-way"
    resumed = run_cli(tmp_path / "killed", voc, "--resume")
    for p in (whole, resumed):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    a = (tmp_path / "whole" / "yolov2-tiny-synth_final.weights").read_bytes()
    b = (tmp_path / "killed" / "yolov2-tiny-synth_final.weights").read_bytes()
    assert a == b  # bit for bit, seen in the header included
    log_a, log_b = read_log(tmp_path / "whole"), read_log(tmp_path / "killed")
    assert list(log_b["step"]) == list(range(1, 25))
    assert list(log_a["loss"]) == list(log_b["loss"]) and list(log_a["size"]) == list(log_b["size"])
    assert set(log_a["size"][:20]) == {64, 96} and set(log_a["size"][20:]) == {96}  # darknet's final phase


def test_cfg_fingerprint_recorded(voc, tmp_path):
    r = train(SYNTH, voc, tmp_path / "run", max_batches=1, **SMALL)
    ckpt = torch.load(r.checkpoint, weights_only=True)
    assert ckpt["fingerprint"] == cfg_fingerprint(SYNTH) and ckpt["seen"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--sizes", "100"], "sizes must be positive multiples of 32"),
    (["--sizes", "a-b"], "expected N, N,M,... or MIN-MAX"),
    (["--sets", "2007"], "expected YEAR:SET"),
    (["--pretrained", "x.weights"], "--pretrained and --partial go together"),
    (["--weights", "{tmp}/missing.weights"], "missing.weights"),
    (["--recipe", "sgd"], "invalid choice: 'sgd'"),
])
def test_bad_arguments_are_refused(voc, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    try:
        code = train_main([str(SYNTH), str(voc), "--out", str(tmp_path / "run"), "--device", "cpu", *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code in (1, 2)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("cfg", "data", "message"), [
    (SYNTH, "missing", "no such dataset directory"),
    (stock_cfg("yolov2-tiny-voc"), "voc", "[region] classes=20, but the dataset has 5 class names"),
    (SYNTH, "empty", "no VOC2007/ or VOC2012/ folder"),
])
def test_bad_data_is_refused(voc, tmp_path, capsys, cfg, data, message):
    root = {"missing": tmp_path / "missing", "voc": voc, "empty": tmp_path}[data]
    assert train_main([str(cfg), str(root), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err
