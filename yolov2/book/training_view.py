"""The live training view: a run's curves, rule by rule, while it trains, and a Stop button.

`TrainingView(trainer)` wraps a :class:`yolov2.train.trainer.Trainer`; `view.run()` runs it, and each
log row (one per iteration: `Trainer.iteration`) goes to the view through `Trainer.run(on_row=...)`:
the loss and darknet's running average, darknet's diagnostics (Avg IOU, Avg Recall, Obj, No Obj),
the loss split by rule (:func:`yolov2.loss.region_loss.rule_parts`: the prior pull's share vanishes
at seen = 12800, the no-object share falls as the empty slots learn), the learning rate and the
images per second. The numbers it draws are the log's own: the view reads nothing the trainer does
not already read once per iteration, so it adds no host-device synchronisation.

Cost. Drawing a figure takes a fixed time (a PNG of a few curves: a tenth of a second or more on a
busy CPU), whatever the speed of the training. So the view keeps an account: it redraws (at most
once every `min_interval` seconds) only when the time it has spent so far plus the last draw's cost
stays within `draw_share` (2%) of the run's time so far, and draws once more at the end (the final
state). Every `inspect_every` iterations it can show the iteration's last forward through chapter
6b's :class:`yolov2.book.widgets.AssignmentInspector`, on the same account. A status line (counts
and the last row's numbers, a few hundred bytes) is updated every iteration.

Stop. The button sets `Trainer.stop_requested`; the run ends at the next iteration boundary with its
checkpoint written, and continues with `--resume` (or a `Trainer(..., resume=True)`). A button click
reaches the kernel only while no cell is running: `view.run(block=False)` trains in a background thread
and returns at once, so the button works; `view.wait()` then returns the result. `block=True` (the
default) trains in the calling cell, which a book build and nbval need.

Without a frontend (a plain script, no IPython kernel, or no ipywidgets) `run()` is `trainer.run()`
with its tqdm bar. Figures are PNGs from a pyplot-free `Figure` in an `ipywidgets.Image` (see
:mod:`yolov2.book.widgets` for why not an Output widget); the last one stays in the saved widget
state, so a built book shows the view as the run left it.
"""

from __future__ import annotations

import dataclasses
import html
import io
import threading
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from yolov2.book.viz import COLUMN_WIDTH, DPI, MIN_FONT
from yolov2.book.widgets import AssignmentInspector
from yolov2.loss.assign import PRIOR_SEEN
from yolov2.loss.region_loss import PART_KEYS, split_bound
from yolov2.train.runtime import now
from yolov2.train.settings import TrainResult

# CSS classes of the parts a browser test reads or presses
STATUS_CLASS = "yolov2-training-status"
CURVES_CLASS = "yolov2-training-curves"
STOP_CLASS = "yolov2-training-stop"
PART_LABELS = {"loss_coord": "coordinates", "loss_obj": "objectness (positives)",
               "loss_noobj": "no-object", "loss_prior": "prior pull", "loss_class": "classes"}
PART_COLORS = {"loss_coord": "tab:blue", "loss_obj": "tab:green", "loss_noobj": "0.6",
               "loss_prior": "tab:orange", "loss_class": "tab:purple"}
DRAW_SHARE = 0.02  # the most of the run's time the view spends drawing, once past its first draw
FIGURE_SIZE = (COLUMN_WIDTH - 0.2, 5.0)  # inches: the book column (see widgets.FIGURE_SIZE)


def frontend() -> bool:
    """True inside an IPython kernel (Jupyter, Voila, a book build) with ipywidgets installed."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def shares(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Each part's share of the loss per row (PART_KEYS -> array in [0, 1]); rows of an older log
    (nan parts) give nan."""
    parts = np.array([[r[k] for k in PART_KEYS] for r in rows], dtype=np.float64).reshape(-1, len(PART_KEYS))
    total = parts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = parts / total
    return {k: share[:, i] for i, k in enumerate(PART_KEYS)}


def draw_curves(fig, rows: Sequence[dict], title: str = "") -> None:
    """The view's four panels of the rows (Trainer log rows) on `fig` (cleared first): loss and
    darknet's average; diagnostics; the loss split by rule as shares; learning rate and images/s."""
    fig.clear()
    axes = fig.subplots(2, 2)
    (loss_ax, diag_ax), (part_ax, rate_ax) = axes
    keys = ("batch", "loss", "avg_loss", "avg_iou", "avg_recall", "obj", "no_obj", "lr", "images_per_s",
            "seen")
    col = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    b = col["batch"]
    loss_ax.plot(b, col["loss"], lw=0.7, alpha=0.5, label="loss per image")
    loss_ax.plot(b, col["avg_loss"], lw=1.4, label="darknet's avg")
    if len(b) and (col["loss"] > 0).all():
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        loss_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        loss_ax.yaxis.set_minor_formatter(NullFormatter())
    loss_ax.set(xlabel="batch", ylabel="loss")
    diagnostics = (("avg_iou", "Avg IOU"), ("avg_recall", "Avg Recall"), ("obj", "Obj"), ("no_obj", "No Obj"))
    for key, label in diagnostics:
        diag_ax.plot(b, col[key], lw=1.0, label=label)
    diag_ax.set(xlabel="batch", ylim=(0, 1), ylabel="diagnostic")
    share = shares(rows)
    if len(b):
        part_ax.stackplot(b, *(np.nan_to_num(share[k]) for k in PART_KEYS),
                          colors=[PART_COLORS[k] for k in PART_KEYS],
                          labels=[PART_LABELS[k] for k in PART_KEYS], linewidth=0)
    prior_batches = b[col["seen"] >= PRIOR_SEEN]
    if len(prior_batches) and (col["seen"] < PRIOR_SEEN).any():
        part_ax.axvline(prior_batches[0], color="black", lw=0.8, ls=":", label=f"seen {PRIOR_SEEN}")
    part_ax.set(xlabel="batch", ylabel="share of the loss", ylim=(0, 1))
    rate_ax.plot(b, col["lr"], color="tab:red", lw=1.2, label="learning rate")
    rate_ax.set(xlabel="batch", ylabel="learning rate")
    rate_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    speed = rate_ax.twinx()
    speed.plot(b, col["images_per_s"], color="tab:gray", lw=0.8, label="images/s")
    speed.set_ylabel("images/s")
    for ax in (loss_ax, diag_ax, part_ax, rate_ax, speed):
        ax.tick_params(labelsize=MIN_FONT)
        ax.xaxis.label.set_size(MIN_FONT)
        ax.yaxis.label.set_size(MIN_FONT)
        ax.yaxis.get_offset_text().set_size(MIN_FONT)
    for ax in (loss_ax, diag_ax):
        ax.legend(fontsize=MIN_FONT, loc="best", frameon=False)
    part_ax.legend(fontsize=MIN_FONT, loc="lower left", frameon=False, ncols=2)
    lines = rate_ax.get_legend_handles_labels()[0] + speed.get_legend_handles_labels()[0]
    rate_ax.legend(lines, [ln.get_label() for ln in lines], fontsize=MIN_FONT, loc="lower right",
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=MIN_FONT + 1)
    fig.subplots_adjust(left=0.11, right=0.89, top=0.93 if title else 0.97, bottom=0.1, wspace=0.33,
                        hspace=0.38)


class _LiveInspector(AssignmentInspector):
    """The assignment inspector, fed a new batch in place (its controls and their values kept)."""

    def show_batch(self, images: torch.Tensor, truth: torch.Tensor, logits: torch.Tensor, seen: int) -> None:
        self.images = images.detach().float().permute(0, 2, 3, 1).cpu().numpy()
        self.truth, self.logits = truth.detach().cpu(), logits.detach().cpu().float()
        if self.seen.value != seen:
            self.seen.value = seen  # its observer refreshes
        else:
            self.refresh()


class TrainingView:
    """A live view of `trainer`'s run (module docstring); `.widget` is the box a notebook displays.

    min_interval: seconds between two redraws at least; draw_share: the most of the run's time
    spent drawing (the throttle); inspect_every: show every K-th iteration's last forward in the
    assignment inspector (0: no inspector), its first `inspect_images` images; class_names for it
    (default: the trainer's dataset's, else the class numbers). live: force the widgets on (True)
    or the tqdm fallback (False); None: widgets where there is a frontend (:func:`frontend`).

    State, for a cell (or a test) to check: `rows` (every log row, one per iteration), `draws`
    (figures drawn), `draw_time` (seconds spent in the view's updates), `result` (the TrainResult).
    """

    def __init__(self, trainer, *, min_interval: float = 1.0, draw_share: float = DRAW_SHARE,
                 inspect_every: int = 0, inspect_images: int = 4, class_names: Sequence[str] | None = None,
                 dpi: int = DPI, live: bool | None = None):
        self.trainer, self.min_interval, self.draw_share, self.dpi = trainer, min_interval, draw_share, dpi
        self.inspect_every, self.inspect_images = inspect_every, inspect_images
        if class_names is None:
            dataset = getattr(trainer, "dataset", None)
            class_names = dataset.classes if dataset is not None else \
                [str(c) for c in range(trainer.net.region.classes)]
        self.class_names = list(class_names)
        self.live = frontend() if live is None else live
        self.rows: list[dict] = []
        self.draws, self.draw_time, self.inspections = 0, 0.0, 0
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        self.state = "ready"  # running, stopping, stopped, finished, failed
        self._t0 = self._last_draw = self._last_inspect = 0.0
        # seconds, the last measured; before the first, a busy CPU's (measured: a draw takes 0.5 s of
        # CPU on a shared 2-core AMD EPYC, 2 s of wall time), so the first draw does not overdraw
        self._cost = {"draw": 1.0, "inspect": 2.0}
        self._thread, self._shown = None, False
        self._batch: dict = {}
        self.inspector: _LiveInspector | None = None
        self.widget = self._widgets() if self.live else None

    # ---- widgets

    def _widgets(self):
        import ipywidgets as w

        self.status = w.HTML()
        self.status.add_class(STATUS_CLASS)
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop",
                                    tooltip="end the run at the next iteration boundary (checkpoint written)",
                                    layout=w.Layout(width="90px"))
        self.stop_button.add_class(STOP_CLASS)
        self.stop_button.on_click(lambda _: self.stop())
        self.curves = w.Image(format="png")
        self.curves.add_class(CURVES_CLASS)
        self.inspector_box = w.VBox([])
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=FIGURE_SIZE)
        FigureCanvasAgg(self.figure)
        self._status()
        return w.VBox([w.HBox([self.stop_button, self.status]), self.curves, self.inspector_box])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._shown = True
        display(self.widget)

    def _status(self) -> None:
        s, t = self.trainer.s, self.trainer
        last = self.rows[-1] if self.rows else None
        text = (f"<b>{self.state}</b>: {len(self.rows)} iterations logged, batch {t.batch_num} of "
                f"{s.max_batches}, seen {t.seen}")
        if last is not None:
            text += (f"; loss {last['loss']:.3g} (avg {last['avg_loss']:.3g}), {last['images_per_s']:.1f} "
                     f"images/s, lr {last['lr']:.3g}")
        if self.result is not None and self.result.stopped:
            text += (f"<br>checkpoint written: {html.escape(str(self.result.checkpoint))} (continue with "
                     f"--resume)")
        if self.error is not None:
            text += f"<br>{html.escape(str(self.error))}"
        self.status.value = text

    def draw(self) -> None:
        """Redraw the curves from every row so far (the throttle calls it; the end of a run too)."""
        s = self.trainer.s
        draw_curves(self.figure, self.rows, f"{len(self.rows)} iterations, batch {self.trainer.batch_num} of "
                    f"{s.max_batches}")
        buf = io.BytesIO()  # zlib level 1: 0.1 s less than the default 6 for 1% more bytes
        self.figure.savefig(buf, format="png", dpi=self.dpi, pil_kwargs={"compress_level": 1})
        self.curves.value = buf.getvalue()
        self.draws += 1

    # ---- the run

    def stop(self) -> None:
        """End the run at the next iteration boundary (the Stop button's action)."""
        self.trainer.stop_requested = True
        if self.state == "running":
            self.state = "stopping"
        if self.live:
            self._status()

    def _hooks(self) -> list:
        """Keep the last forward's images, truths and logits for the inspector (references, no copy)."""
        if not (self.live and self.inspect_every):
            return []
        batch = self._batch

        def images(module, args):
            batch["images"] = args[0]

        def loss(module, args):
            batch["logits"], batch["truth"], batch["seen"] = args[0].detach(), args[1], int(args[2])

        return [self.trainer.net.register_forward_pre_hook(images),
                self.trainer.loss_fn.register_forward_pre_hook(loss)]

    def _affordable(self, kind: str, last: float) -> bool:
        """Whether a draw (or an inspection) now keeps the view's time within draw_share of the run's."""
        t = now()
        spent = self.draw_time + self._cost[kind]
        return t - last >= self.min_interval and spent <= self.draw_share * (t - self._t0)

    def _timed(self, kind: str, work) -> None:
        t = now()
        work()
        self._cost[kind] = now() - t
        if kind == "draw":
            self._last_draw = now()
        else:
            self._last_inspect = now()

    def _on_row(self, row: dict) -> None:
        t = now()
        self.rows.append(row)
        if not self.live:
            return
        self._status()
        self.draw_time += now() - t
        if self._affordable("draw", self._last_draw):
            self._timed("draw", self.draw)
            self.draw_time += self._cost["draw"]
        if self.inspect_every and row["step"] % self.inspect_every == 0 and \
                self._affordable("inspect", self._last_inspect):
            self._timed("inspect", self._inspect)
            self.draw_time += self._cost["inspect"]

    def _inspect(self) -> None:
        b, k = self._batch, self.inspect_images
        if "logits" not in b:
            return
        images, truth, logits = b["images"][:k], b["truth"][:k], b["logits"][:k]
        if self.inspector is None:
            self.inspector = _LiveInspector(images.float(), truth, logits, self.trainer.loss_fn,
                                            self.class_names, seen=b["seen"], dpi=self.dpi)
            self.inspector_box.children = (self.inspector.widget,)
        else:
            self.inspector.show_batch(images, truth, logits, b["seen"])
        self.inspections += 1

    def run(self, block: bool = True) -> TrainResult | None:
        """Train to the trainer's max_batches (or a Stop). block: in this cell (returns the result); False:
        in a background thread (returns None at once; the Stop button works; `wait()` for the result).
        Without a frontend: `trainer.run()` with its tqdm bar, whatever `block` says."""
        if not self.live:
            self.state = "running"
            self.result = self.trainer.run(on_row=self._on_row)
            self.state = "stopped" if self.result.stopped else "finished"
            return self.result
        if self.state in ("running", "stopping"):
            raise RuntimeError("this view's run is already going")
        # the view replaces the progress bar (a notebook's tqdm bar would be a second widget)
        self.trainer.rt = dataclasses.replace(self.trainer.rt, progress=False)
        self.trainer.stop_requested, self.error, self.state = False, None, "running"
        self._t0 = self._last_draw = self._last_inspect = now()
        if not self._shown and frontend():
            self._ipython_display_()
        self._status()
        if block:
            self._run()
            if self.error is not None:
                raise self.error
            return self.result
        self._thread = threading.Thread(target=self._run, name="yolov2-training-view", daemon=True)
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> TrainResult | None:
        """The result of a `run(block=False)`, once its thread ends (None if `timeout` passed first)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        if self.error is not None:
            raise self.error
        return self.result

    def _run(self) -> None:
        hooks = self._hooks()
        try:
            self.result = self.trainer.run(on_row=self._on_row)
            self.state = "stopped" if self.result.stopped else "finished"
        except BaseException as e:  # noqa: BLE001 (shown, then raised by run() or wait())
            self.error, self.state = e, "failed"
        finally:
            for h in hooks:
                h.remove()
            t = now()
            self._status()
            if self.rows:
                self.draw()  # the final state: what the saved widget state (a built book) shows
            if self.inspect_every and self.rows and not self.inspections:
                self._inspect()  # at least one, for the final state
            self.draw_time += now() - t
            self.stop_button.disabled = True

    # ---- checks

    def split_error(self) -> float:
        """The largest |Σ parts − loss| over the rows, in units of :func:`split_bound` (<= 1: within)."""
        worst = 0.0
        for r in self.rows:
            bound = split_bound(r["loss"], r["terms"])
            worst = max(worst, abs(sum(r[k] for k in PART_KEYS) - r["loss"]) / bound)
        return worst
