"""Plot helpers shared by the book's chapters: detections on an image, precision-recall curves.

Each takes a matplotlib `ax`, draws on it and returns the artists; nothing is set at import time.
Class colours are darknet's (`src/image.c`: `get_color`, and `draw_detections`' offset
`class*123457 % classes`), so a figure matches darknet's `predictions.png`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.patches import Rectangle

# darknet's colour ramp: magenta, blue, cyan, green, yellow, red
_RAMP = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))


def _ramp(c: int, x: int, top: int) -> float:
    ratio = np.float32(x) / np.float32(top) * np.float32(5)
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    ratio -= i
    return float((1 - ratio) * _RAMP[i][c] + ratio * _RAMP[j][c])


def class_color(class_id: int, classes: int) -> tuple[float, float, float]:
    """Darknet's RGB colour (each in [0, 1]) of a class among `classes`."""
    offset = class_id * 123457 % classes
    return _ramp(2, offset, classes), _ramp(1, offset, classes), _ramp(0, offset, classes)


def draw_detections(ax, image: np.ndarray, dets, class_names: Sequence[str], thresh: float = 0.0,
                    fontsize: float = 8) -> list:
    """Show `image` (H, W, 3) RGB and the boxes of `dets` with class colours and scores.

    dets: a `yolov2.detect.Detections`, or a list of `((x1, y1, x2, y2), [(class, prob), ...])`
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

    curves: class -> object with `.recall` and `.precision` arrays (`yolov2.evaluate.PRCurve`).
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
