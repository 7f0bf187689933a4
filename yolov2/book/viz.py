"""Plot helpers shared by the book's chapters: detections, ground-truth boxes, the region layer's
grid and anchors, target assignments, precision-recall curves, a network's layers.

Each takes a matplotlib `ax`, draws on it and returns the artists; nothing is set at import time.
Class colours are darknet's (`src/image.c`: `get_color`, and `draw_detections`' offset
`class*123457 % classes`), so a figure matches darknet's `predictions.png`. Assignment figures
read a `yolov2.loss.assign.Assignment` (darknet's `forward_region_layer` decisions), never recompute it.

`draw_boxes` and the grid/assignment helpers use continuous pixels: pixel column c spans [c, c+1),
an image of width Wp is shown over [0, Wp] (`extent`), and a box's *pixel corners* `(x0, y0, x1, y1)`
are drawn as given; a normalised centre-size box (x, y, w, h) has corners `x0 = (x - w/2)·Wp`, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.patches import FancyArrowPatch, Rectangle
from matplotlib.text import Text

from yolov2.data.plots import COLUMN_WIDTH, DPI, MIN_FONT, STYLE  # noqa: F401 (DPI: for the chapters)
from yolov2.detect.draw import class_color
from yolov2.loss.assign import IGNORED, NEGATIVE, POSITIVE

# slot states of an Assignment: negative grey, ignored orange, positive green
STATE_COLORS = {NEGATIVE: (0.88, 0.88, 0.88), IGNORED: (1.0, 0.62, 0.1), POSITIVE: (0.15, 0.65, 0.25)}

# --------------------------------------------------------------------------- the book's figure style

# One style for the book and the package's command figures (`anchors --plot`, `eval --plots`): it lives
# in the lower part, yolov2.data.plots (the text column's 7 inches at 100 dpi, no text under 9 points).
# Every chapter calls use_book_style() once; figures are then sized in inches of the column.
BOOK_STYLE = STYLE


def use_book_style() -> None:
    """Set matplotlib's defaults to the book's: 100 dpi, the column's width, fonts >= 9 pt.

    A function the chapters call, not an import side effect (STYLE.md: nothing set at import time).
    """
    matplotlib.rcParams.update(BOOK_STYLE)


def figure_problems(fig) -> list[str]:
    """What would make `fig` hard to read at the column's width: wider than COLUMN_WIDTH inches, or
    a visible text smaller than MIN_FONT points. An empty list when it reads well."""
    problems = []
    width = fig.get_size_inches()[0]
    if width > COLUMN_WIDTH + 1e-6:
        problems.append(f"{width:.1f} in wide (the column is {COLUMN_WIDTH:g} in)")
    small = sorted({round(t.get_fontsize(), 1) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < MIN_FONT})
    if small:
        problems.append(f"text at {', '.join(f'{v:g}' for v in small)} pt (at least {MIN_FONT:g} pt)")
    return problems


def draw_detections(ax, image: np.ndarray, dets, class_names: Sequence[str], thresh: float = 0.0,
                    fontsize: float = MIN_FONT) -> list:
    """Show `image` (H, W, 3) RGB and the boxes of `dets` with class colours and scores.

    dets: a `yolov2.detect.detector.Detections`, or a list of `((x1, y1, x2, y2), [(class, prob), ...])`
    (pixel corners). One box per detection, labelled with every class it kept above `thresh`
    ("dog 87%, cat 51%"), coloured by its first class (darknet's colours).
    """
    image = np.asarray(image)
    artists = [ax.imshow(image)]
    for (x1, y1, x2, y2), labels in (dets.per_box() if hasattr(dets, "per_box") else dets):
        labels = [(c, p) for c, p in labels if p > thresh]
        if not labels:
            continue
        color = class_color(labels[0][0], len(class_names))
        rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2)
        artists.append(ax.add_patch(rect))
        text = ", ".join(f"{class_names[c]} {100 * p:.0f}%" for c, p in labels)
        artists.append(ax.text(max(x1, 0), max(y1, 0), text, color="black", fontsize=fontsize, va="bottom",
                               bbox={"facecolor": color, "edgecolor": "none", "pad": 1}))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    return artists


def plot_pr_curves(ax, curves: Mapping[str, object], aps: Mapping[str, float | None] | None = None,
                   classes: Sequence[str] | None = None, interpolated: bool = True) -> list:
    """Precision against recall per class, from `EvalResult.curves` (and `.ap` for the legend).

    curves: class -> object with `.recall` and `.precision` arrays (`yolov2.detect.evaluate.PRCurve`).
    `interpolated` also draws the monotone precision envelope that VOC's AP integrates.
    """
    artists = []
    names = list(classes) if classes is not None else list(curves)
    for k, name in enumerate(names):
        c = curves[name]
        if len(c.recall) == 0 or np.isnan(c.recall).all():
            continue
        color = class_color(k, max(len(names), 1))
        ap = aps.get(name) if aps else None
        label = name if ap is None else f"{name} ({100 * ap:.1f})"
        if interpolated:
            envelope = np.maximum.accumulate(np.asarray(c.precision)[::-1])[::-1]
            artists += ax.step(c.recall, envelope, where="post", color=color, linewidth=1.5, label=label)
            label = None
        artists += ax.plot(c.recall, c.precision, color=color, linewidth=0.7, alpha=0.5, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    return artists


# --------------------------------------------------------------------------- boxes, grid, anchors


def to_corners(boxes, width: float, height: float) -> np.ndarray:
    """Normalised centre-size boxes (..., 4) `(x, y, w, h)` -> pixel corners (..., 4) `(x0, y0, x1, y1)`
    on a width x height image (continuous pixels, no VOC +1)."""
    b = np.asarray(boxes, dtype=np.float64)
    x, y, w, h = b[..., 0] * width, b[..., 1] * height, b[..., 2] * width, b[..., 3] * height
    return np.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1)


def _show_image(ax, image: np.ndarray) -> object:
    h, w = image.shape[:2]
    return ax.imshow(np.clip(image, 0, 1), extent=(0, w, h, 0), interpolation="nearest")


def draw_boxes(ax, image: np.ndarray | None, corners, ids: Sequence[int], class_names: Sequence[str],
               dashed: Sequence[bool] | None = None, labels: bool = False, linewidth: float = 1.5,
               fontsize: float = MIN_FONT) -> list:
    """Ground-truth boxes, coloured by class (darknet's colours), on `image` (H, W, 3) RGB in [0, 1].

    corners: (K, 4) pixel corners `(x0, y0, x1, y1)` (continuous: pixel i spans [i, i+1)); ids: K class
    indices into class_names; dashed: K flags (e.g. VOC's difficult) drawn dashed; labels writes the
    class name above each box. With an image the axes show exactly it (limits fixed, no axis), so
    boxes drawn later that stick out are clipped; image None draws on the axes as they are.
    """
    artists = [] if image is None else [_show_image(ax, np.asarray(image))]
    for k, ((x0, y0, x1, y1), c) in enumerate(zip(np.asarray(corners).reshape(-1, 4), ids, strict=True)):
        color = class_color(int(c), len(class_names))
        style = "--" if dashed is not None and dashed[k] else "-"
        artists.append(ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color,
                                              lw=linewidth, ls=style)))
        if labels:
            artists.append(ax.text(x0, y0, class_names[int(c)], color="black", fontsize=fontsize, va="bottom",
                                   bbox={"facecolor": color, "edgecolor": "none", "pad": 1}, clip_on=True))
    if image is not None:  # the image's frame, kept when later patches stick out of it
        h, w = np.asarray(image).shape[:2]
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
    return artists


def draw_grid(ax, h: int, w: int, size: tuple[float, float] | None = None, color="white",
              linewidth: float = 0.6, alpha: float = 0.7) -> list:
    """The region layer's H x W cells over an image of `size` = (width, height) pixels (default (W, H):
    grid units, one cell = 1). Returns the two line collections (columns, rows)."""
    sw, sh = size if size is not None else (w, h)
    xs, ys = np.arange(w + 1) * (sw / w), np.arange(h + 1) * (sh / h)
    style = {"colors": color, "linewidth": linewidth, "alpha": alpha}
    return [ax.vlines(xs, 0, sh, **style), ax.hlines(ys, 0, sw, **style)]


def _tab10(k: int) -> tuple:
    return colormaps["tab10"](k % 10)


def draw_anchors(ax, anchors, h: int, w: int, cell: tuple[int, int], size: tuple[float, float] | None = None,
                 labels: bool = True, linewidth: float = 1.5, fontsize: float = MIN_FONT) -> list:
    """Each anchor's box centred on cell `(i, j)` (column, row) of an H x W grid.

    anchors: (A, 2) `(w, h)` in grid cells (as in a cfg); size: (width, height) of the image in
    pixels (default (W, H), grid units). Anchor n spans `aw/W` of the image width, like a prediction
    with tw = 0. Colours: matplotlib's tab10, anchor n the n-th.
    """
    sw, sh = size if size is not None else (w, h)
    cw, ch = sw / w, sh / h  # one cell in pixels
    i, j = cell
    cx, cy = (i + 0.5) * cw, (j + 0.5) * ch
    artists = []
    for n, (aw, ah) in enumerate(np.asarray(anchors, dtype=np.float64).reshape(-1, 2)):
        bw, bh = aw * cw, ah * ch
        artists.append(ax.add_patch(Rectangle((cx - bw / 2, cy - bh / 2), bw, bh, fill=False, ec=_tab10(n),
                                              lw=linewidth)))
        if labels:
            artists.append(ax.text(cx - bw / 2, cy - bh / 2, f"a{n}", color=_tab10(n), fontsize=fontsize,
                                   va="bottom", ha="left", clip_on=True))
    cell_patch = Rectangle((i * cw, j * ch), cw, ch, fill=True, fc="white", alpha=0.35, ec="none")
    artists.append(ax.add_patch(cell_patch))
    return artists


# --------------------------------------------------------------------------- target assignment


def truth_color(t: int) -> tuple:
    """The colour of truth row t in assignment figures (tab10, cycling)."""
    return _tab10(t)


def draw_anchor_slots(ax, assignment, image_index: int, size: tuple[float, float] | None = None,
                      truths: bool = True, ignored: bool = True,
                      highlight: tuple[int, int, int] | None = None,
                      class_names: Sequence[str] | None = None, fontsize: float = MIN_FONT) -> list:
    """What the region layer decided for one image of a batch, from a `yolov2.loss.assign.Assignment`.

    Draws the image's truths (thin, colour of the truth row), the predicted box of every positive slot
    (thick, the colour of the truth that owns it, labelled `t·a IoU`), the predicted boxes of ignored
    slots (dashed orange) and, with `highlight=(n, j, i)` (anchor, row, column), that slot's cell and
    box in black. size: (width, height) of the shown image in pixels (default (W, H): grid units).
    """
    a, b = assignment, image_index
    _, _, h, w = a.state.shape  # (N, A, H, W)
    sw, sh = size if size is not None else (w, h)
    artists = []

    def box(xywh, **style) -> None:
        x0, y0, x1, y1 = to_corners(np.asarray(xywh, dtype=np.float64), sw, sh)
        artists.append(ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, **style)))

    if truths:
        for t in np.flatnonzero(a.valid[b].cpu().numpy()):
            row = a.truth[b, t].tolist()
            box(row[:4], ec=truth_color(t), lw=1.2)
            name = f" {class_names[int(row[4])]}" if class_names is not None else ""
            x0, y0 = to_corners(row[:4], sw, sh)[:2]
            label = {"facecolor": truth_color(t), "edgecolor": "none", "pad": 1}
            artists.append(ax.text(x0, y0, f"t{t}{name}", color="white", fontsize=fontsize, va="bottom",
                                   clip_on=True, bbox=label))
    state = a.state[b].cpu().numpy()  # (A, H, W)
    pred = a.pred[b].cpu().numpy()  # (A, H, W, 4) normalised centre-size
    if ignored:
        for n, j, i in zip(*np.nonzero(state == IGNORED), strict=True):
            box(pred[n, j, i], ec=STATE_COLORS[IGNORED], lw=1.0, ls="--")
    for n, j, i in zip(*np.nonzero(state == POSITIVE), strict=True):
        t = int(a.truth_index[b, n, j, i])
        box(pred[n, j, i], ec=truth_color(t), lw=2.4)
        x0, _, _, y1 = to_corners(pred[n, j, i], sw, sh)
        artists.append(ax.text(x0, y1, f"t{t}·a{n} IoU {float(a.iou[b, n, j, i]):.2f}", color="black",
                               fontsize=fontsize, va="top", clip_on=True,
                               bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}))
    if highlight is not None:
        n, j, i = highlight
        cw, ch = sw / w, sh / h
        artists.append(ax.add_patch(Rectangle((i * cw, j * ch), cw, ch, fc="black", alpha=0.35, ec="black")))
        box(pred[n, j, i], ec="black", lw=1.6, ls=":")
    return artists


def draw_slot_states(ax, assignment, image_index: int, anchor: int, annotate_above: float | None = 0.3,
                     highlight: tuple[int, int] | None = None, fontsize: float = MIN_FONT) -> list:
    """One anchor's H x W slots coloured by state (negative grey, ignored orange, positive green).

    Negative slots are shaded darker the closer their best IoU is to the image's truths; slots that
    are not negative, or whose best IoU is above `annotate_above` (None: none), show it as text.
    highlight: (j, i) outlines one slot. Axes in cells: column i along x, row j along y.
    """
    a, b = assignment, image_index
    state = a.state[b, anchor].cpu().numpy()  # (H, W)
    best = a.best_iou[b, anchor].cpu().numpy()
    rgb = np.empty((*state.shape, 3))
    for s, color in STATE_COLORS.items():
        rgb[state == s] = color
    neg = state == NEGATIVE
    rgb[neg] *= (1 - 0.7 * np.clip(best[neg], 0, 1))[:, None]  # darker with a higher best IoU
    artists = [ax.imshow(rgb, extent=(0, state.shape[1], state.shape[0], 0), interpolation="nearest")]
    if annotate_above is not None:
        for j, i in zip(*np.nonzero(~neg | (best > annotate_above)), strict=True):
            artists.append(ax.text(i + 0.5, j + 0.5, f"{best[j, i]:.2f}".lstrip("0"), ha="center",
                                   va="center", fontsize=fontsize))
    if highlight is not None:
        j, i = highlight
        artists.append(ax.add_patch(Rectangle((i, j), 1, 1, fill=False, ec="black", lw=1.5)))
    ax.set_xticks([])
    ax.set_yticks([])
    return artists


# --------------------------------------------------------------------------- the network, from its cfg

# box colours per layer type (matplotlib's Pastel1/Pastel2), so a type reads the same in every figure
LAYER_COLORS = {"convolutional": "#b3cde3", "maxpool": "#fbb4ae", "route": "#ccebc5", "reorg": "#decbe4",
                "region": "#fed9a6"}
_SHORT = {"convolutional": "conv", "maxpool": "max"}


def layer_label(row: dict) -> str:
    """One layer of `Darknet.summary()` as a line: index, type, kernel/stride and filters, output H×W×C."""
    c, h, w = row["output"]
    kind = _SHORT.get(row["type"], row["type"])
    if row["type"] == "route":
        what = f"route {row['detail']}"
    elif row["size"]:
        what = f"{kind} {row['size']}×{row['size']}/{row['stride']}"
        what += f" {row['filters']}" if row["filters"] else ""
    elif row["stride"]:
        what = f"{kind} /{row['stride']}"
    else:
        what = kind
    return f"{row['index']:>2} {what}  → {h}×{w}×{c}"


def draw_network(ax, net, height: int | None = None, width: int | None = None, columns: int = 2,
                 fontsize: float = MIN_FONT) -> dict[str, list]:
    """A box per layer of `net` (a `Darknet`), labelled with its output shape at height x width.

    Layers run top to bottom in `columns` columns (layer i in column i // rows, rows = ceil(n /
    columns)); consecutive layers of a column are joined by a short line, and every input that is not
    the previous layer (a route's source) by a curved arrow from the source's box. Shapes come from
    `net.summary(height, width)` (default: the cfg's input). Returns {"boxes": one Rectangle per layer,
    "labels": one Text per layer, "links": the lines, "routes": the arrows}; the axes are set to fit.
    """
    rows = net.summary(height, width)
    per_col = -(-len(rows) // columns)
    pos = {r["index"]: (r["index"] // per_col, r["index"] % per_col) for r in rows}  # (column, row)
    box_w, box_h = 0.86, 0.72
    out: dict[str, list] = {"boxes": [], "labels": [], "links": [], "routes": []}
    for r in rows:
        col, row = pos[r["index"]]
        rect = Rectangle((col, row - box_h / 2), box_w, box_h, fc=LAYER_COLORS.get(r["type"], "0.9"),
                         ec="0.3", lw=0.8)
        out["boxes"].append(ax.add_patch(rect))
        out["labels"].append(ax.text(col + 0.03, row, layer_label(r), fontsize=fontsize, va="center",
                                     ha="left", family="monospace"))
        for s in net.layers[r["index"]].sources:
            if s < 0:
                continue
            scol, srow = pos[s]
            if s == r["index"] - 1 and scol == col:
                out["links"].extend(ax.plot([col + box_w / 2] * 2, [srow + box_h / 2, row - box_h / 2],
                                            color="0.3", lw=0.8))
            elif s != r["index"] - 1:
                bend = 0.15  # of the arrow's length: a bulge right of the boxes, inside the axes
                arrow = FancyArrowPatch((scol + box_w, srow), (col + box_w, row), arrowstyle="-|>",
                                        mutation_scale=10, color="C3", lw=1.2,
                                        connectionstyle=f"arc3,rad={-bend if srow < row else bend}")
                out["routes"].append(ax.add_patch(arrow))
    ax.set_xlim(-0.02, columns + 0.02)
    ax.set_ylim(per_col - 0.5, -0.5)
    ax.set_axis_off()
    return out
