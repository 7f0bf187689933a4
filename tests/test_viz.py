"""The book's plot helpers draw what they are given, where it belongs.

Oracles: the box conventions of `yolov2.darknet.boxes` (centre-size -> corners), darknet's class colours,
and, for the assignment figures, the `Assignment` of darknet's golden region case p02 (whose
positives and ignored slots `tests/test_loss.py` checks against darknet).
"""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from yolov2 import Darknet
from yolov2.book.viz import (
    STATE_COLORS,
    class_color,
    draw_anchor_slots,
    draw_anchors,
    draw_boxes,
    draw_grid,
    draw_network,
    draw_slot_states,
    layer_label,
    to_corners,
    truth_color,
)
from yolov2.darknet.boxes import xywh_to_xyxy
from yolov2.loss.assign import IGNORED, POSITIVE
from yolov2.loss.region_loss import RegionLoss

NAMES = ("circle", "square", "triangle", "hbar", "vbar")


def axes():
    return Figure().add_subplot()


@pytest.fixture(scope="module")
def p02():
    """Darknet's golden case p02 (2 images, 13x13, crafted ignored and positive slots) and its Assignment."""
    d = dict(np.load(FIXTURES / "region" / "p02.npz"))
    loss_fn = RegionLoss(d["anchors"].reshape(-1, 2), 20)
    a = loss_fn.explain(torch.tensor(d["input"]), torch.tensor(d["truth"]), int(d["seen"]))
    return d, a


def rect(p: Rectangle) -> list[float]:
    return [p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height()]


def test_to_corners_is_xywh_to_xyxy_in_pixels():
    boxes = torch.tensor([[0.5, 0.25, 0.2, 0.1], [0.1, 0.9, 0.3, 0.4]])
    want = xywh_to_xyxy(boxes).double().numpy() * [416, 320, 416, 320]
    np.testing.assert_allclose(to_corners(boxes.numpy(), 416, 320), want, rtol=1e-6)


def test_draw_boxes_places_class_coloured_boxes_on_the_image():
    ax = axes()
    image = np.full((40, 60, 3), 0.5, np.float32)
    corners = [(10, 5, 30, 25), (0, 0, 60, 40)]
    artists = draw_boxes(ax, image, corners, [3, 1], NAMES, dashed=[False, True], labels=True)
    shown, patches = artists[0], [a for a in artists if isinstance(a, Rectangle)]
    assert shown.get_extent() == [0, 60, 40, 0]  # pixel i spans [i, i+1)
    assert ax.get_xlim() == (0, 60) and ax.get_ylim() == (40, 0)
    assert [rect(p) for p in patches] == [list(c) for c in corners]
    assert [p.get_edgecolor()[:3] for p in patches] == [pytest.approx(class_color(c, 5)) for c in (3, 1)]
    assert [p.get_linestyle() for p in patches] == ["-", "--"]
    assert [t.get_text() for t in artists if isinstance(t, Text)] == ["hbar", "square"]


def test_draw_boxes_without_image_draws_only_boxes():
    ax = axes()
    artists = draw_boxes(ax, None, np.zeros((0, 4)), [], NAMES)
    assert artists == [] and len(ax.images) == 0


@pytest.mark.parametrize("size", [None, (416, 320)])
def test_draw_grid_lines_on_cell_boundaries(size):
    cols, rows = draw_grid(axes(), 10, 13, size)
    sw, sh = size or (13, 10)
    xs = [seg[0][0] for seg in cols.get_segments()]
    ys = [seg[0][1] for seg in rows.get_segments()]
    np.testing.assert_allclose(xs, np.arange(14) * sw / 13)
    np.testing.assert_allclose(ys, np.arange(11) * sh / 10)


def test_draw_anchors_centred_on_the_cell_in_grid_cells():
    anchors = [(1.0, 1.09), (6.44, 7.55)]
    artists = draw_anchors(axes(), anchors, 13, 13, cell=(6, 2), size=(416, 416))
    boxes = [rect(p) for p in artists if isinstance(p, Rectangle)][:2]
    for (aw, ah), (x0, y0, x1, y1) in zip(anchors, boxes, strict=True):
        assert (x1 - x0, y1 - y0) == pytest.approx((aw * 32, ah * 32))  # 32-pixel cells at 416
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((6.5 * 32, 2.5 * 32))
    assert [t.get_text() for t in artists if isinstance(t, Text)] == ["a0", "a1"]


@pytest.mark.parametrize("image", [0, 1])
def test_draw_anchor_slots_draws_the_assignment(p02, image):
    d, a = p02
    ax = axes()
    artists = draw_anchor_slots(ax, a, image, size=(416, 416), class_names=[f"c{k}" for k in range(20)])
    patches = [p for p in artists if isinstance(p, Rectangle)]
    thick = [p for p in patches if p.get_linewidth() > 2]  # positive slots' predictions
    dashed = [p for p in patches if p.get_linestyle() == "--"]  # ignored slots' predictions
    assert len(thick) == int(a.positive[image].sum()) and len(dashed) == int(a.ignored[image].sum())
    n, j, i = torch.nonzero(a.positive[image])[0].tolist()
    t = int(a.truth_index[image, n, j, i])
    want = to_corners(a.pred[image, n, j, i].numpy(), 416, 416)
    assert rect(thick[0]) == pytest.approx(list(want))
    assert thick[0].get_edgecolor() == pytest.approx(truth_color(t))
    labels = [x.get_text() for x in artists if isinstance(x, Text)]
    assert f"t{t}·a{n} IoU {float(a.iou[image, n, j, i]):.2f}" in labels
    assert sum(s.startswith("t") and " c" in s for s in labels) == int(a.valid[image].sum())


def test_draw_anchor_slots_highlights_a_slot(p02):
    _, a = p02
    plain = draw_anchor_slots(axes(), a, 0, truths=False, ignored=False)
    marked = draw_anchor_slots(axes(), a, 0, truths=False, ignored=False, highlight=(2, 7, 5))
    cell = [rect(p) for p in marked[len(plain):] if isinstance(p, Rectangle) and p.get_fill()]
    assert cell == [[5, 7, 6, 8]]  # grid units by default: column 5, row 7


def test_draw_slot_states_colours_each_state(p02):
    _, a = p02
    ax = axes()
    artists = draw_slot_states(ax, a, 0, anchor=1, annotate_above=None)
    rgb = artists[0].get_array()
    state = a.state[0, 1].numpy()  # anchor 1 of image 0 holds 2 positive and 2 ignored slots
    for s in (POSITIVE, IGNORED):
        assert (state == s).any()
        np.testing.assert_allclose(rgb[state == s], np.broadcast_to(STATE_COLORS[s], rgb[state == s].shape))
    texts = draw_slot_states(axes(), a, 0, anchor=1, annotate_above=0.3)[1:]
    best = a.best_iou[0, 1].numpy()
    assert len(texts) == int(((state != 0) | (best > 0.3)).sum())


def test_importing_viz_sets_nothing_up():
    # (reading rcParams['backend'] would itself import pyplot: leave it out)
    code = ("import json, sys, matplotlib as m; "
            "rc = lambda: {k: m.rcParams[k] for k in m.rcParams if k != 'backend'}; "
            "before = rc(); import yolov2.book.viz; "
            "print(json.dumps(['matplotlib.pyplot' in sys.modules, rc() == before]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, True]


def test_book_style_and_figure_problems():
    import matplotlib
    from matplotlib.figure import Figure

    from yolov2.book.viz import BOOK_STYLE, COLUMN_WIDTH, MIN_FONT, figure_problems, use_book_style

    saved = dict(matplotlib.rcParams)
    try:
        use_book_style()
        assert all(matplotlib.rcParams[k] == v or k == "figure.figsize" for k, v in BOOK_STYLE.items())
        fig = Figure()  # the style's default size: the column's width
        ax = fig.subplots()
        ax.set(xlabel="x", ylabel="y", title="t")
        ax.plot([0, 1], label="a")
        ax.legend()
        assert tuple(fig.get_size_inches()) == (COLUMN_WIDTH, 3.5)
        assert figure_problems(fig) == []
        ax.text(0, 0, "tiny", fontsize=MIN_FONT - 1)
        wide = Figure(figsize=(COLUMN_WIDTH + 1, 3))
        wide.subplots().set_title("wide")
        assert figure_problems(fig) == [f"text at {MIN_FONT - 1:g} pt (at least {MIN_FONT:g} pt)"]
        want = f"{COLUMN_WIDTH + 1:.1f} in wide (the column is {COLUMN_WIDTH:g} in)"
        assert figure_problems(wide) == [want]
    finally:
        matplotlib.rcParams.update(saved)


@pytest.mark.parametrize("cfg", ["yolov2-voc", "yolov2-tiny-voc"])
def test_draw_network_draws_each_layer_with_its_output_shape(cfg):
    from yolov2.book.viz import LAYER_COLORS, figure_problems

    net = Darknet(cfg)
    fig = Figure(figsize=(7, 5.4))
    ax = fig.add_subplot()
    art = draw_network(ax, net, 608, 608)
    rows = net.summary(608, 608)
    assert len(art["boxes"]) == len(art["labels"]) == len(net.layers) == len(rows)
    per_col = -(-len(rows) // 2)
    for r, box, text in zip(rows, art["boxes"], art["labels"], strict=True):
        c, h, w = r["output"]
        assert text.get_text().startswith(f"{r['index']:>2} ") and text.get_text().endswith(f"→ {h}×{w}×{c}")
        # column-major: layer i in column i // per_col, row i % per_col, coloured by its type
        assert (round(box.get_x()), round(box.get_y() + box.get_height() / 2)) == divmod(r["index"], per_col)
        assert box.get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(LAYER_COLORS[r["type"]]))
    # an arrow for every input that is not the previous layer: yolov2-voc's route 16 (25) and route 27 24 (28)
    skips = [(s, lay.index) for lay in net.layers for s in lay.sources if 0 <= s != lay.index - 1]
    assert len(art["routes"]) == len(skips) == (2 if cfg == "yolov2-voc" else 0)
    # a line from each layer to the next where the next reads it, except across the column break:
    # yolov2-voc's route 16 (layer 25) does not read layer 24
    chained = [i for i in range(1, len(rows)) if i - 1 in net.layers[i].sources and i != per_col]
    assert len(art["links"]) == len(chained) == len(rows) - (3 if cfg == "yolov2-voc" else 2)
    assert figure_problems(fig) == []


def test_layer_label_says_kernel_stride_filters_and_shape():
    rows = {r["index"]: r for r in Darknet("yolov2-voc").summary()}
    assert layer_label(rows[0]) == " 0 conv 3×3/1 32  → 416×416×32"
    assert layer_label(rows[17]) == "17 max 2×2/2  → 13×13×512"
    assert layer_label(rows[27]) == "27 reorg /2  → 13×13×256"
    assert layer_label(rows[28]) == "28 route 27 24  → 13×13×1280"
    assert layer_label(rows[31]) == "31 region  → 13×13×125"
