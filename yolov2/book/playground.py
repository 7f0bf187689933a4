"""A detection playground (the book's chapter 8), on ipywidgets.

Choose an image (one of those given, or the reader's own file through the upload control), move
`thresh` and `nms`, switch letterbox and the NMS kind (`sort`: darknet's per-class `do_nms_sort`,
`obj`: the class-agnostic `do_nms_obj`), and see the boxes drawn, the class probabilities of a chosen
box, and which boxes NMS removed: the box that removed each and their IoU. Everything shown comes
from `yolov2.detect.detector.Detector.explain` (the detector's forward and the package's NMS, which
records who suppressed whom): there is no second implementation here. ipywidgets is imported when a
playground is made. The figure is drawn on a pyplot-free `Figure` and shown as a PNG in an
`ipywidgets.Image`, as the assignment inspector does (`yolov2.book.widgets` says why).
"""

from __future__ import annotations

import copy
import html
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from yolov2.book.viz import COLUMN_WIDTH, DPI, MIN_FONT, draw_detections
from yolov2.book.widgets import _png, _table
from yolov2.data.image import ImageError
from yolov2.detect.detector import NMS_KINDS, Detector
from yolov2.detect.postprocess import Detections, Suppression

COUNT_CLASS = "yolov2-playground-count"  # CSS class of the count line (the browser test reads it)
BOXES_CLASS = "yolov2-playground-boxes"  # the number of drawn boxes, inside the count line
THRESH_CLASS = "yolov2-playground-thresh"  # the threshold it was drawn at, inside the count line
MESSAGE_CLASS = "yolov2-playground-message"  # a refused upload's one-line message
FIGURE_WIDTH = COLUMN_WIDTH - 0.2  # inches: the book column, as the inspector's figure
REMOVED_COLOR = "0.35"


def box_label(k: int, dets: Detections, class_names: Sequence[str]) -> str:
    """Menu entry of drawn box k: its number, classes with probabilities, slot."""
    classes = ", ".join(f"{class_names[c]} {100 * p:.0f}%" for c, p in dets.per_box()[k][1])
    return f"box {k}: {classes} (slot {int(dets.index[k])})"


def suppressor_name(s: Suppression, dets: Detections) -> str:
    """The suppressing box as the reader sees it: 'box k (slot n)' when drawn, else why it is not."""
    drawn = dets.index.tolist()
    if s.by in drawn:
        return f"box {drawn.index(s.by)} (slot {s.by})"
    return f"slot {s.by} (not drawn: no class above thresh)"


def removed_rows(dets: Detections, class_names: Sequence[str], nms: float) -> list[tuple[str, ...]]:
    """One row per NMS decision of `dets.suppressed`: the slot, what it lost, to which box, the IoU."""
    rows = []
    for s in dets.suppressed or []:
        lost = ", ".join(f"{class_names[c]} {100 * p:.0f}%" for c, p in zip(s.classes, s.probs, strict=True))
        rows.append((f"slot {s.slot}", lost, suppressor_name(s, dets), f"{s.iou:.3f} > {nms:.2f}"))
    return rows


def probability_rows(dets: Detections, k: int, class_names: Sequence[str],
                     thresh: float) -> list[tuple[str, str]]:
    """Drawn box k's objectness and each class's probability after NMS, with why a zero is zero."""
    slot = int(dets.index[k])
    lost = {c: s for s in dets.suppressed or [] if s.slot == slot for c in s.classes}
    rows = [("objectness", f"{float(dets.objectness[k]):.4f}")]
    for c, name in enumerate(class_names):
        p = float(dets.probs[k, c])
        if p > 0:
            why = f"{p:.4f}"
        elif c in lost:
            why = (f"0 (NMS: {lost[c].probs[lost[c].classes.index(c)]:.4f} taken by "
                   f"{suppressor_name(lost[c], dets)}, IoU {lost[c].iou:.3f})")
        else:
            why = f"0 (≤ thresh {thresh:.2f})"
        rows.append((name, why))
    return rows


class Playground:
    """The widget: controls `image`, `upload`, `thresh`, `nms`, `letterbox`, `nms_kind`, `box`; views
    `count` (the drawn boxes and the threshold), `message` (a refused upload), `view` (the figure),
    `probabilities` (the chosen box's) and `removed` (what NMS removed and why).

    detector: a `Detector` (copied: the controls change the copy's thresh, nms, letterbox and
    nms_kind, not the caller's); images: (H, W, 3) RGB arrays, a list or a {label: image} mapping;
    class_names: default the detector's names. `.widget` is the box to display; `.detections` the
    current `Detections` (with `suppressed`), `.figure` the last figure.
    """

    def __init__(self, detector: Detector, images: Sequence[np.ndarray] | Mapping[str, np.ndarray],
                 class_names: Sequence[str] | None = None, dpi: int = DPI):
        import ipywidgets as w  # lazily: the package does not need ipywidgets to import

        self.detector = copy.copy(detector)  # the same net, its own settings
        names = class_names if class_names is not None else detector.names
        if names is None:
            raise ValueError("the playground needs class names: pass class_names, or a detector made with "
                             "names (Detector.load, or Detector(net, names=...))")
        if len(names) != detector.net.num_classes:
            raise ValueError(f"{len(names)} class names for a model of {detector.net.num_classes} classes")
        self.class_names, self.dpi = tuple(names), dpi
        items = images.items() if isinstance(images, Mapping) else \
            ((f"image {k}", im) for k, im in enumerate(images))
        self.images = {str(label): self.detector._image(im) for label, im in items}  # checks each one
        if not self.images:
            raise ValueError("the playground needs at least one image")
        self._quiet = False
        narrow = {"description_width": "55px"}
        self.image = w.Dropdown(options=list(self.images), description="image", style=narrow,
                                layout=w.Layout(width="230px"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="your image",
                                   layout=w.Layout(width="130px"))
        self.thresh = w.FloatSlider(value=self.detector.thresh, min=0.01, max=0.95, step=0.01,
                                    description="thresh", readout_format=".2f", continuous_update=False,
                                    style=narrow, layout=w.Layout(width="300px"))
        self.nms = w.FloatSlider(value=self.detector.nms, min=0.05, max=1.0, step=0.05, description="nms",
                                 readout_format=".2f", continuous_update=False, style=narrow,
                                 layout=w.Layout(width="300px"))
        self.letterbox = w.Checkbox(value=self.detector.letterbox, description="letterbox", indent=False,
                                    layout=w.Layout(width="100px"))
        self.nms_kind = w.ToggleButtons(options=list(NMS_KINDS), value=self.detector.nms_kind,
                                        tooltips=["per class (do_nms_sort)", "class-agnostic (do_nms_obj)"],
                                        style={"button_width": "50px"})
        self.box = w.Dropdown(description="box", style={"description_width": "30px"},
                              layout=w.Layout(width="420px"))
        self.count = w.HTML()
        self.count.add_class(COUNT_CLASS)
        self.message = w.HTML()
        self.message.add_class(MESSAGE_CLASS)
        # at most its natural width: a VBox stretches its children, which would upscale the PNG
        self.view = w.Image(format="png", layout=w.Layout(max_width=f"{round(FIGURE_WIDTH * dpi)}px"))
        self.probabilities = w.HTML()
        self.removed = w.HTML()
        self.widget = w.VBox([w.HBox([self.image, self.upload]), self.message,
                              w.HBox([self.thresh, self.nms]), w.HBox([self.letterbox, self.nms_kind]),
                              self.count, self.view, self.box, self.probabilities, self.removed])
        for control in (self.image, self.thresh, self.nms, self.letterbox, self.nms_kind):
            control.observe(self.refresh, names="value")
        self.box.observe(self._box_changed, names="value")
        self.upload.observe(self._uploaded, names="value")
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ the reader's own file

    def _uploaded(self, change) -> None:
        for f in change["new"] or ():
            self.add_file(str(f["name"]), bytes(f["content"]))

    def add_file(self, name: str, data: bytes) -> bool:
        """Decode an uploaded file (the package's `read_image`) and show it; on a bad file show a
        one-line message naming it instead. Returns whether the image was added."""
        base = Path(name).name or "upload"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / re.sub(r"[^\w.-]", "_", base)
            path.write_bytes(data)
            try:
                image = self.detector.read(path)
            except (ImageError, ValueError, OSError) as e:
                text = str(e).replace(str(path), base).splitlines()[0]
                self.message.value = f"<span style='color:#b00'>{html.escape(text)}</span>"
                return False
        label = f"upload: {base}"
        self.images[label] = image
        self.message.value = ""
        self._quiet = True
        try:
            self.image.options = list(self.images)
        finally:
            self._quiet = False
        if self.image.value == label:
            self.refresh()
        else:
            self.image.value = label  # refreshes
        return True

    # ------------------------------------------------------------------ detection and views

    def refresh(self, change=None) -> None:
        """Detect on the chosen image with the controls' settings; redraw everything."""
        if self._quiet:
            return
        d = self.detector
        d.thresh, d.nms = float(self.thresh.value), float(self.nms.value)
        d.letterbox, d.nms_kind = bool(self.letterbox.value), str(self.nms_kind.value)
        self.detections = d.explain(self.images[self.image.value])
        dets = self.detections
        fit = "letterbox" if d.letterbox else "plain resize"
        self.count.value = (f"<b><span class='{BOXES_CLASS}'>{len(dets)}</span> boxes</b> at thresh "
                            f"<span class='{THRESH_CLASS}'>{d.thresh:.2f}</span>, nms {d.nms:.2f} "
                            f"({d.nms_kind}, {fit}); NMS removed {len(dets.suppressed)} "
                            f"{'class probabilities' if d.nms_kind == 'sort' else 'boxes'}")
        options = [(box_label(k, dets, self.class_names), int(s)) for k, s in enumerate(dets.index)]
        keep = self.box.value if self.box.value in [v for _, v in options] else \
            (options[0][1] if options else None)
        self._quiet = True
        try:
            self.box.options = options or [("no boxes at this threshold", None)]
            self.box.value = keep
        finally:
            self._quiet = False
        how = "per class" if d.nms_kind == "sort" else "class-agnostic"
        self.removed.value = (f"<b>removed by NMS</b> ({how}, IoU > nms {d.nms:.2f}, to a box kept earlier)"
                              + _table(removed_rows(dets, self.class_names, d.nms),
                                       ("slot", "lost", "to", "IoU")))
        self.show_box()

    def _box_changed(self, change) -> None:
        if not self._quiet:
            self.show_box()

    def show_box(self) -> None:
        """The chosen box's probabilities as a table, and the figure with it highlighted."""
        dets, slot = self.detections, self.box.value
        if slot is None:
            self.probabilities.value = "<i>no box drawn at this threshold</i>"
        else:
            k = dets.index.tolist().index(slot)
            self.probabilities.value = (f"<b>{html.escape(box_label(k, dets, self.class_names))}</b>"
                                        + _table(probability_rows(dets, k, self.class_names,
                                                                  self.detector.thresh),
                                                 ("class", "probability after NMS")))
        self.draw()

    def draw(self) -> None:
        """The image, the drawn boxes in darknet's colours (numbered), the boxes NMS removed (dashed
        grey) and the chosen box (dotted black)."""
        dets, image = self.detections, self.images[self.image.value]
        h, w = image.shape[:2]
        fig = Figure(figsize=(FIGURE_WIDTH, float(np.clip(FIGURE_WIDTH * h / w, 2.5, 6.0)) + 0.4))
        ax = fig.add_subplot()
        removed = {s.slot: s.box for s in dets.suppressed or [] if s.slot not in dets.index.tolist()}
        for x1, y1, x2, y2 in removed.values():
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=REMOVED_COLOR, lw=1, ls="--"))
        draw_detections(ax, image, dets, self.class_names)
        for k, (x1, _, _, y2) in enumerate(dets.xyxy.tolist()):
            ax.text(min(max(x1, 0), w - 1) + 2, min(y2, h) - 2, str(k), color="white", fontsize=MIN_FONT,
                    va="bottom", bbox={"facecolor": "black", "edgecolor": "none", "pad": 1}, clip_on=True)
        if self.box.value is not None:
            x1, y1, x2, y2 = dets.xyxy[dets.index.tolist().index(self.box.value)].tolist()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="black", lw=1.6, ls=":"))
        legend = [Line2D([], [], color=REMOVED_COLOR, lw=1, ls="--", label="removed by NMS"),
                  Line2D([], [], color="black", lw=1.6, ls=":", label="chosen box")]
        fig.legend(handles=legend, loc="lower center", ncols=2, fontsize=MIN_FONT, frameon=False)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.4 / fig.get_size_inches()[1] + 0.02)
        self.figure = fig
        self.view.value = _png(fig, self.dpi)
