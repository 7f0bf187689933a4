"""An interactive inspector of darknet's target assignment (the book's chapter 6b), on ipywidgets.

Pick an image, a `seen` value and the ignore threshold; see the grid, the anchors, which slots are
positive (and for which truth), ignored or negative, their IoUs, and every rule's target and scale
for a chosen slot with darknet's delta there. Everything shown comes from `RegionLoss.explain`
(`yolov2.loss.assign.assign`, darknet's `forward_region_layer`) and the loss's own gradient: there is
no second implementation here. ipywidgets is imported when an inspector is made, so importing this
module does not need it. Figures are drawn on a pyplot-free `Figure` and shown as a PNG in an
`ipywidgets.Image`: it works the same in Jupyter, in Voila and in a book build, which embeds the
widget state (the figure included) as it is when the notebook ends. (Not an `Output` widget: nbclient,
which Voila and Jupyter Book execute with, mirrors every output into an Output widget back to the
kernel, and that traffic can stall its wait for the cell's reply until the cell timeout.)
"""

from __future__ import annotations

import dataclasses
import html
import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor

from yolov2.book.viz import (
    COLUMN_WIDTH,
    DPI,
    MIN_FONT,
    STATE_COLORS,
    draw_anchor_slots,
    draw_anchors,
    draw_grid,
    draw_slot_states,
)
from yolov2.darknet.region import split_entries
from yolov2.loss.assign import IGNORED, NEGATIVE, POSITIVE, PRIOR_SEEN, Assignment
from yolov2.loss.region_loss import RegionLoss

STATE_NAMES = {NEGATIVE: "negative", IGNORED: "ignored", POSITIVE: "positive"}
SUMMARY_CLASS = "yolov2-inspector-summary"  # CSS class of the summary text (the browser test reads it)
NEGATIVES_LISTED = 5  # the slot menu lists this many negatives, those with the highest best IoU
# The figure is drawn at the book column's pixel width (COLUMN_WIDTH in at DPI: ~680 px), so the
# page shows its PNG at its natural size, neither upscaled (blurry) nor shrunk (tiny text).
FIGURE_SIZE = (COLUMN_WIDTH - 0.2, 5.4)  # inches


@dataclasses.dataclass
class Inspection:
    """One image's assignment and darknet's delta, as the inspector shows them.

    assignment: the `Assignment` of a batch of this one image; delta: (A, 5+C, H, W) −∂L/∂logits,
    darknet's `delta_logit`; loss: L of the image.
    """

    assignment: Assignment
    delta: Tensor
    loss: float


def inspect(loss_fn: RegionLoss, logits: Tensor, truth: Tensor, seen: int) -> Inspection:
    """The assignment and darknet's delta of one image. logits (1, A*(5+C), H, W), truth (1, T, 5)
    normalised centre-size rows."""
    x = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(x, truth, seen)
    loss.backward()
    return Inspection(loss_fn.explain(x, truth, seen), -split_entries(x.grad, loss_fn.anchors.shape[0])[0],
                      float(loss.detach()))


def summary_lines(a: Assignment, seen: int, thresh: float, class_names: Sequence[str]) -> list[str]:
    """The assignment of image 0 of `a` in words: counts of each state, then one line per truth."""
    state = a.state[0]
    counts = {s: int((state == s).sum()) for s in STATE_NAMES}
    valid = a.valid[0]
    prior = f"seen {seen} < {PRIOR_SEEN}: prior pull on" if seen < PRIOR_SEEN else \
        f"seen {seen} ≥ {PRIOR_SEEN}: prior pull off"
    lines = [f"{int(valid.sum())} truths → {counts[POSITIVE]} positive slots, {counts[IGNORED]} ignored "
             f"(best IoU > {thresh:.2f}), {counts[NEGATIVE]} negative; {prior}"]
    for t in torch.nonzero(valid).flatten().tolist():
        row = a.truth[0, t]
        taken = " — overwritten by a later truth" if a.overwritten[0, t] else ""
        lines.append(f"truth {t} ({class_names[int(row[4])]}): cell i={int(a.cell_i[0, t])} "
                     f"j={int(a.cell_j[0, t])}, anchor {int(a.best_anchor[0, t])}, "
                     f"IoU {float(a.truth_iou[0, t]):.3f}{taken}")
    return lines


def slot_options(a: Assignment) -> list[tuple[str, tuple[int, int, int]]]:
    """Menu entries (label, (n, j, i)): positive slots, ignored slots, then the negatives nearest a truth."""
    state, best = a.state[0], a.best_iou[0]  # (A, H, W)
    options = []
    for s in (POSITIVE, IGNORED):
        for n, j, i in torch.nonzero(state == s).tolist():
            who = (f"truth {int(a.truth_index[0, n, j, i])}" if s == POSITIVE
                   else f"IoU {float(best[n, j, i]):.2f}")
            options.append((f"a{n} j{j} i{i}: {STATE_NAMES[s]} ({who})", (n, j, i)))
    neg = torch.where(state == NEGATIVE, best, -1.0).flatten()
    for k in neg.topk(min(NEGATIVES_LISTED, int((state == NEGATIVE).sum()))).indices.tolist():
        n, j, i = (int(v) for v in np.unravel_index(k, state.shape))
        options.append((f"a{n} j{j} i{i}: negative (IoU {float(best[n, j, i]):.2f})", (n, j, i)))
    return options


def slot_rows(ins: Inspection, slot: tuple[int, int, int],
              class_names: Sequence[str]) -> list[tuple[str, ...]]:
    """Each rule's (rule, target, scale, darknet's delta) at one slot (n, j, i) of image 0."""
    a, (n, j, i) = ins.assignment, slot
    d = ins.delta[n, :, j, i] + 0.0  # (5+C,); + 0.0 prints -0.0 (a zero gradient negated) as +0
    tx, ty, tw, th = a.coord_target[0, n, :, j, i].tolist()
    cls = int(a.class_target[0, n, j, i])
    state = int(a.state[0, n, j, i])
    obj_rule = {POSITIVE: "objectness (rescore: IoU)", IGNORED: "objectness (ignored)",
                NEGATIVE: "objectness (negative)"}[state]
    coord_rule = "coordinates (truth)" if state == POSITIVE else (
        "coordinates (prior pull)" if bool(a.prior_active) else "coordinates (none)")
    rows = [
        ("best IoU with a truth", f"{float(a.best_iou[0, n, j, i]):.4f}", "", ""),
        (obj_rule, f"{float(a.obj_target[0, n, j, i]):.4f}", f"{float(a.obj_scale[0, n, j, i]):g}",
         f"{float(d[4]):+.5f}"),
        (coord_rule, f"{tx:.3f}, {ty:.3f}, {tw:.3f}, {th:.3f}", f"{float(a.coord_scale[0, n, j, i]):.4g}",
         ", ".join(f"{float(v):+.5f}" for v in d[0:4])),
    ]
    if cls >= 0:
        rows.append((f"class ({class_names[cls]})", "one-hot", f"{float(a.class_scale[0, n, j, i]):g}",
                     f"{float(d[5 + cls]):+.5f} (its class)"))
    else:
        rows.append(("class", "none", "0", f"{float(d[5:].abs().max()):g}"))
    return rows


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    td = "<td style='padding:1px 6px'>{}</td>".format
    cells = "".join("<tr>" + "".join(td(html.escape(c)) for c in r) + "</tr>" for r in rows)
    head = "".join(f"<th style='padding:1px 6px;text-align:left'>{html.escape(h)}</th>" for h in header)
    return f"<table style='font-size:12px'><tr>{head}</tr>{cells}</table>"


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # pyplot-free: no figure manager, nothing to close
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class AssignmentInspector:
    """The widget: controls `image`, `seen`, `thresh`, `slot`; views `summary`, `details`, `view` (figure).

    images: (N, 3, S_h, S_w) the network's input in [0, 1] RGB; truth: (N, T, 5) normalised centre-size
    rows; logits: (N, A*(5+C), H, W) the model's raw head output for those images; loss_fn: the
    RegionLoss whose rules are shown (its thresh is the slider's start); class_names: C names.
    `.widget` is the box to display; `.inspection` the current `Inspection`, `.figure` the last figure.
    """

    def __init__(self, images: Tensor, truth: Tensor, logits: Tensor, loss_fn: RegionLoss,
                 class_names: Sequence[str], seen: int = 0, dpi: int = DPI):
        import ipywidgets as w  # lazily: the package does not need ipywidgets to import

        if not (len(images) == len(truth) == len(logits)):
            raise ValueError(f"images, truth and logits must hold the same number of images, got "
                             f"{len(images)}, {len(truth)}, {len(logits)}")
        self.images = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, S_h, S_w, 3) for imshow
        self.truth, self.logits = truth.detach().cpu(), logits.detach().cpu().float()
        self.loss_fn, self.class_names, self.dpi = loss_fn, tuple(class_names), dpi
        self._losses: dict[float, RegionLoss] = {}
        self._quiet = False  # set while refresh() rewrites the slot menu
        # one column (controls, summary, figure, slot menu, table) fits a book page's ~600 pixels
        narrow = {"description_width": "45px"}
        self.image = w.Dropdown(options=[(f"image {k}", k) for k in range(len(images))], value=0,
                                description="image", style=narrow, layout=w.Layout(width="170px"))
        self.seen = w.BoundedIntText(value=seen, min=0, max=10**9, description="seen", style=narrow,
                                     layout=w.Layout(width="150px"))
        self.thresh = w.FloatSlider(value=loss_fn.params.thresh, min=0.05, max=0.95, step=0.01,
                                    description="thresh", readout_format=".2f", continuous_update=False,
                                    style=narrow, layout=w.Layout(width="270px"))
        self.slot = w.Dropdown(description="slot", style=narrow, layout=w.Layout(width="360px"))
        # the ignored slots' predicted boxes (dashed orange) crowd the image: off until asked for
        self.show_ignored = w.Checkbox(value=False, description="ignored slots' boxes", indent=False,
                                       layout=w.Layout(width="200px"))
        self.summary = w.HTML()
        self.summary.add_class(SUMMARY_CLASS)
        self.details = w.HTML()
        self.view = w.Image(format="png")
        self.widget = w.VBox([w.HBox([self.image, self.seen, self.thresh]), self.summary,
                              self.show_ignored, self.view, self.slot, self.details])
        for control in (self.image, self.seen, self.thresh):
            control.observe(self.refresh, names="value")
        self.slot.observe(self._slot_changed, names="value")
        self.show_ignored.observe(lambda change: self.draw(), names="value")
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def region_loss(self, thresh: float) -> RegionLoss:
        """loss_fn with another ignore threshold (kept: moving the slider back costs nothing)."""
        key = round(float(thresh), 6)
        if key not in self._losses:
            params = dataclasses.replace(self.loss_fn.params, thresh=key)
            self._losses[key] = RegionLoss(self.loss_fn.anchors.cpu(), self.loss_fn.num_classes,
                                           **dataclasses.asdict(params))
        return self._losses[key]

    def refresh(self, change=None) -> None:
        """Recompute the assignment for the controls' image, seen and thresh; redraw everything."""
        k, seen = self.image.value, int(self.seen.value)
        self.inspection = inspect(self.region_loss(self.thresh.value), self.logits[k:k + 1],
                                  self.truth[k:k + 1], seen)
        a = self.inspection.assignment
        lines = summary_lines(a, seen, self.thresh.value, self.class_names)
        self.summary.value = (f"<div style='line-height:1.4'><b>image {k}</b>: {html.escape(lines[0])}<br>"
                              + "<br>".join(html.escape(s) for s in lines[1:]) + "</div>")
        options = slot_options(a)
        keep = self.slot.value if self.slot.value in [v for _, v in options] else options[0][1]
        self._quiet = True
        try:
            self.slot.options = options
            self.slot.value = keep
        finally:
            self._quiet = False
        self.show_slot()

    def _slot_changed(self, change) -> None:
        if not self._quiet:
            self.show_slot()

    def show_slot(self) -> None:
        """The chosen slot's rules as a table, and the figure with that slot highlighted."""
        n, j, i = self.slot.value
        rows = slot_rows(self.inspection, (n, j, i), self.class_names)
        state = STATE_NAMES[int(self.inspection.assignment.state[0, n, j, i])]
        self.details.value = (f"<b>slot a{n} j{j} i{i}</b> ({state}); "
                              f"loss of the image {self.inspection.loss:.3f}"
                              + _table(rows, ("rule", "target", "scale", "darknet's delta")))
        self.draw()

    def draw(self) -> None:
        """Image, grid, truths, positive (and, if `show_ignored`, ignored) predictions and the anchors at
        the chosen slot's cell; beside it each anchor's slot states; a legend of the colours below."""
        a, (n, j, i) = self.inspection.assignment, self.slot.value
        _, num, h, w = a.state.shape  # (1, A, H, W)
        image = self.images[self.image.value]
        size = (image.shape[1], image.shape[0])
        fig = Figure(figsize=FIGURE_SIZE)
        grid = fig.add_gridspec(num, 2, width_ratios=(4.4, 1), wspace=0.02, hspace=0.25)
        ax = fig.add_subplot(grid[:, 0])
        ax.imshow(np.clip(image, 0, 1), extent=(0, size[0], size[1], 0), interpolation="nearest")
        draw_grid(ax, h, w, size)
        draw_anchors(ax, self.loss_fn.anchors, h, w, (i, j), size, labels=False, linewidth=0.8)
        draw_anchor_slots(ax, a, 0, size, class_names=self.class_names, highlight=(n, j, i),
                          ignored=self.show_ignored.value)
        ax.set_xlim(0, size[0])
        ax.set_ylim(size[1], 0)
        ax.set_axis_off()
        for m in range(num):
            sub = fig.add_subplot(grid[m, 1])
            draw_slot_states(sub, a, 0, m, annotate_above=None, highlight=(j, i) if m == n else None)
            sub.set_ylabel(f"a{m}", rotation=0, labelpad=10, fontsize=MIN_FONT)
        legend = [
            Line2D([], [], color="0.3", lw=1.2, label="truth t"),
            Line2D([], [], color="0.3", lw=2.4, label="positive's box"),
            Line2D([], [], color="black", lw=1.6, ls=":", label="chosen slot"),
            Patch(color=STATE_COLORS[POSITIVE], label="positive"),
            Patch(color=STATE_COLORS[IGNORED], label="ignored (IoU > thresh)"),
            Patch(color=STATE_COLORS[NEGATIVE], label="negative"),
        ]
        if self.show_ignored.value:
            legend.insert(2, Line2D([], [], color=STATE_COLORS[IGNORED], lw=1, ls="--",
                                    label="ignored slot's box"))
        fig.legend(handles=legend, loc="lower center", ncols=3, fontsize=MIN_FONT, frameon=False)
        fig.subplots_adjust(left=0.01, right=0.97, top=0.98, bottom=0.14)
        self.figure = fig
        self.view.value = _png(fig, self.dpi)
