"""Figures that commands write (`anchors --plot`, `eval --plots`), in the book's figure style.

The style is defined here and the book's figures use it too (`yolov2.book.viz.BOOK_STYLE` is `STYLE`):
the text column's 7 inches at 100 dpi, no text under 9 points. Figures are `matplotlib.figure.Figure`s
(no pyplot, no global state, any backend) written atomically as PNG (or the format of the file's
extension).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolov2.files import write_bytes

COLUMN_WIDTH = 7.0  # inches, as the book's
DPI = 100
MIN_FONT = 9.0  # points
STYLE = {
    "figure.dpi": DPI, "savefig.dpi": DPI, "figure.figsize": (COLUMN_WIDTH, 3.5),
    "figure.constrained_layout.use": True,
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "figure.titlesize": 11,
    "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
    "legend.title_fontsize": MIN_FONT,
}


def figure(height: float = 3.5, ncols: int = 1):
    """A Figure of the column's width and `height` inches with `ncols` axes, in the book's style."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, ncols)
    return fig, axes


def save(fig, path: str | Path) -> Path:
    """Write `fig` atomically to `path` (its extension's format: .png, .svg, .pdf)."""
    import matplotlib

    path = Path(path)
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=DPI)
    write_bytes(path, buf.getvalue())
    return path


def anchor_curve_figure(ks: Sequence[int], curves: dict[str, np.ndarray]):
    """The paper's Figure 2: mean IoU against k per clustering method (`curves`: name -> (len(ks),))."""
    import matplotlib

    fig, ax = figure(3.0)
    with matplotlib.rc_context(STYLE):
        for name, values in curves.items():
            ax.plot(list(ks), values, marker="o", label=name)
        ax.set_xlabel("number of clusters k")
        ax.set_ylabel("mean IoU with the closest centroid")
        ax.set_xticks(list(ks))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
