"""The live training view (yolov2.book.training_view) driven without a display.

Widgets work without a frontend (their messages go nowhere), so the view's state is checked here
directly: one point per logged iteration in every curve, the loss split summing to the loss, the
inspector fed the run's batches, Stop ending the run at an iteration boundary with a checkpoint
that resumes to the same weights as a run never stopped, the draw throttle, and the tqdm fallback
where there is no kernel.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")

from yolov2.book.training_view import TrainingView, frontend  # noqa: E402
from yolov2.darknet.cfg import stock_cfg  # noqa: E402
from yolov2.data.synth import make_synthetic_voc  # noqa: E402
from yolov2.loss.region_loss import PART_KEYS  # noqa: E402
from yolov2.train.checkpoint import read_log  # noqa: E402
from yolov2.train.runtime import Runtime  # noqa: E402
from yolov2.train.settings import Settings  # noqa: E402
from yolov2.train.trainer import Trainer  # noqa: E402

SYNTH = stock_cfg("yolov2-tiny-synth")


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", 8, 0, seed=5)


def trainer(voc: Path, out: Path, max_batches: int, resume: bool = False, progress: bool = False) -> Trainer:
    out.mkdir(parents=True, exist_ok=True)
    s = Settings(str(SYNTH), str(voc), batch=4, subdivisions=2, sizes=[64], seed=3, max_batches=max_batches,
                 checkpoint_every=100)
    return Trainer(s, Runtime(torch.device("cpu"), progress=progress), out, resume=resume)


def test_view_state_follows_the_log(voc, tmp_path):
    view = TrainingView(trainer(voc, tmp_path / "run", 6), live=True, min_interval=0.0, draw_share=1e9,
                        inspect_every=2, inspect_images=2)
    assert not frontend() and view.widget is not None  # forced on: widgets without a display
    result = view.run()
    log = read_log(result.log)
    n = len(log["step"])
    assert n == 6 and len(view.rows) == n and [r["step"] for r in view.rows] == log["step"].tolist()
    assert view.state == "finished" and not result.stopped and result.weights.name.endswith("_final.weights")
    # every curve of the last figure has one point per logged iteration, at the log's batches
    lines = [ln for ax in view.figure.axes for ln in ax.get_lines() if not ln.get_label().startswith("seen")]
    assert len(lines) == 2 + 4 + 2  # loss, avg; IoU, recall, obj, no-obj; lr, images/s
    for ln in lines:
        assert ln.get_xdata().tolist() == log["batch"].tolist(), ln.get_label()
    loss_line = view.figure.axes[0].get_lines()[0]
    np.testing.assert_allclose(loss_line.get_ydata(), log["loss"], rtol=1e-5)  # the log keeps 6 digits
    assert view.curves.value[:8] == b"\x89PNG\r\n\x1a\n" and view.draws == n + 1  # unthrottled, + the end
    # the split by rule sums to the loss (region_loss.split_bound) and its shares are drawn stacked
    assert view.split_error() <= 1.0
    part_ax = view.figure.axes[2]
    assert len(part_ax.collections) == len(PART_KEYS)
    for r in view.rows:
        assert all(r[k] >= 0 for k in PART_KEYS) and r["loss_noobj"] > 0
    assert f"{n} iterations logged" in view.status.value and "finished" in view.status.value
    # the inspector shows an inspected iteration's last forward: 2 images, that forward's seen
    assert view.inspections >= 3 and view.inspector is not None
    assert view.inspector.images.shape[0] == 2 and view.inspector.seen.value == result.seen
    assert "truths" in view.inspector.summary.value
    assert view.inspector_box.children == (view.inspector.widget,)
    assert view.stop_button.disabled


def test_stop_ends_the_run_and_the_checkpoint_resumes(voc, tmp_path):
    whole = trainer(voc, tmp_path / "whole", 8).run()
    view = TrainingView(trainer(voc, tmp_path / "run", 8), live=True, min_interval=0.0)
    assert view.run(block=False) is None  # a background thread: this thread is free to press Stop
    deadline = time.monotonic() + 120
    while len(view.rows) < 2 and time.monotonic() < deadline and view.state == "running":
        time.sleep(0.01)
    view.stop_button.click()
    result = view.wait(timeout=120)
    assert result is not None and result.stopped and view.state == "stopped"
    done = len(view.rows)
    assert 2 <= done < 8 and result.batches == done  # it stopped at an iteration boundary
    log = read_log(tmp_path / "run")
    assert log["step"].tolist() == list(range(1, done + 1))
    assert not (tmp_path / "run" / "yolov2-tiny-synth_final.weights").exists()
    assert result.weights.is_file() and result.checkpoint.is_file()
    assert "stopped" in view.status.value and view.stop_button.disabled
    resumed = trainer(voc, tmp_path / "run", 8, resume=True)
    assert resumed.step == done and resumed.seen == 4 * done
    final = resumed.run()
    assert not final.stopped
    assert final.weights.read_bytes() == whole.weights.read_bytes()  # the same run, bit for bit
    assert read_log(tmp_path / "run")["loss"].tolist() == read_log(tmp_path / "whole")["loss"].tolist()


def test_draws_are_throttled(voc, tmp_path):
    """The view draws only while its time stays within draw_share of the run's: drawing costs at most
    that share and the final draw (each draw's affordability is judged on the previous draw's cost,
    so one draw dearer than the last may overshoot by its difference)."""
    view = TrainingView(trainer(voc, tmp_path / "run", 16), live=True, min_interval=0.0, draw_share=0.5)
    costs = []
    draw = view.draw

    def timed() -> None:
        t = time.perf_counter()
        draw()
        costs.append(time.perf_counter() - t)

    view.draw = timed
    t0 = time.perf_counter()
    view.run()
    wall = time.perf_counter() - t0
    assert len(costs) == view.draws >= 1 and view.curves.value  # the final state is always drawn
    assert sum(costs[:-1]) <= 0.5 * wall + max(costs)
    assert view.draw_time <= 0.5 * wall + 2 * max(costs) + 0.01 * len(view.rows)  # + the status lines


def test_without_a_frontend_it_is_the_tqdm_bar(voc, tmp_path, capsys):
    view = TrainingView(trainer(voc, tmp_path / "run", 3, progress=True))
    assert view.widget is None and not view.live
    result = view.run()
    assert result.batches == 3 and len(view.rows) == 3 and view.state == "finished"
    err = capsys.readouterr().err
    assert "3/3" in err and "batch" in err  # tqdm's bar on stderr
    assert view.draws == 0
