"""`eval --plots DIR`: the per-class AP bar chart and the precision-recall curves, in the book's style
(`yolov2.data.plots`). Class colours are darknet's (`yolov2.detect.draw.class_color`).

`result` is a `yolov2.detect.evaluate.EvalResult` (not imported: `evaluate`'s command imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from yolov2.data.plots import STYLE, figure, save
from yolov2.detect.draw import class_color

AP_CHART, PR_CURVES = "ap.png", "pr_curves.png"


def ap_figure(result: Any):
    """Horizontal bars: AP per class (classes without objects marked n/a), the mAP as a line."""
    names = list(result.ap)
    fig, ax = figure(max(2.0, 0.6 + 0.25 * len(names)))
    with matplotlib.rc_context(STYLE):
        values = [0.0 if result.ap[c] is None else 100 * result.ap[c] for c in names]
        colors = [class_color(k, len(names)) for k in range(len(names))]
        ax.barh(range(len(names)), values, color=colors)
        for k, c in enumerate(names):
            ax.text(values[k] + 1, k, "n/a" if result.ap[c] is None else f"{values[k]:.1f}", va="center")
        if not np.isnan(result.map):
            ax.axvline(100 * result.map, color="k", linewidth=1, linestyle="--",
                       label=f"mAP {100 * result.map:.1f}")
            ax.legend(loc="lower right")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlim(0, 110)
        ax.set_xlabel(f"AP (%), {result.metric}")
    return fig


def pr_figure(result: Any):
    """Precision against recall per class, with the monotone envelope that VOC's AP integrates."""
    names = list(result.ap)
    fig, ax = figure(3.5)
    with matplotlib.rc_context(STYLE):
        for k, c in enumerate(names):
            curve = result.curves.get(c)
            if curve is None or len(curve.recall) == 0 or np.isnan(curve.recall).all():
                continue
            color = class_color(k, len(names))
            envelope = np.maximum.accumulate(np.asarray(curve.precision)[::-1])[::-1]
            label = c if result.ap[c] is None else f"{c} ({100 * result.ap[c]:.1f})"
            ax.step(curve.recall, envelope, where="post", color=color, linewidth=1.5, label=label)
            ax.plot(curve.recall, curve.precision, color=color, linewidth=0.7, alpha=0.5)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", ncols=2 if len(names) > 8 else 1)
    return fig


def write_eval_plots(result: Any, folder: str | Path) -> list[Path]:
    """Write `ap.png` and `pr_curves.png` into `folder` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save(ap_figure(result), folder / AP_CHART), save(pr_figure(result), folder / PR_CURVES)]
