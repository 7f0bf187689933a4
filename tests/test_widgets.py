"""The assignment inspector, headless: its controls drive `RegionLoss.explain`, and what it shows is
darknet's. Oracle: darknet's golden region case p02 (2 images, 13x13, seen 12800, thresh .6): the
delta the inspector shows for a slot is darknet's `delta_logit` there, and its counts are the
manifest's (`tests/fixtures/region/cases.json`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from yolov2.book.widgets import SUMMARY_CLASS, AssignmentInspector
from yolov2.darknet.region import split_entries
from yolov2.loss.assign import IGNORED, NEGATIVE, POSITIVE, PRIOR_SCALE
from yolov2.loss.region_loss import RegionLoss

CLASSES = [f"class{k}" for k in range(20)]
COUNTS = re.compile(r"(\d+) truths → (\d+) positive slots, (\d+) ignored \(best IoU &gt; ([\d.]+)\), "
                    r"(\d+) negative; seen (\d+)")


@pytest.fixture(scope="module")
def case():
    d = dict(np.load(FIXTURES / "region" / "p02.npz"))
    return d, json.loads((FIXTURES / "region" / "cases.json").read_text())["cases"]["p02"]


@pytest.fixture
def inspector(case):
    d, _ = case
    images = torch.linspace(0, 1, 2 * 3 * 64 * 64).view(2, 3, 64, 64)
    loss_fn = RegionLoss(d["anchors"].reshape(-1, 2), 20)
    return AssignmentInspector(images, torch.tensor(d["truth"]), torch.tensor(d["input"]), loss_fn, CLASSES,
                               seen=int(d["seen"]))


def counts(ins: AssignmentInspector) -> dict[str, float]:
    m = COUNTS.search(ins.summary.value)
    assert m, ins.summary.value
    keys = ("truths", "positive", "ignored", "thresh", "negative", "seen")
    return {k: float(v) for k, v in zip(keys, m.groups(), strict=True)}


def test_counts_per_image_are_darknets(inspector, case):
    _, manifest = case
    seen = []
    for image in (0, 1):
        inspector.image.value = image
        c = counts(inspector)
        assert f"<b>image {image}</b>" in inspector.summary.value
        a = inspector.inspection.assignment
        assert c["positive"] == int(a.positive.sum()) and c["ignored"] == int(a.ignored.sum())
        assert c["positive"] + c["ignored"] + c["negative"] == 5 * 13 * 13
        seen.append(c)
    truths = manifest["truths"]  # [b, t, i, j, anchor, overwritten]
    assert [c["truths"] for c in seen] == [sum(t[0] == b for t in truths) for b in (0, 1)]
    assert sum(c["positive"] for c in seen) == manifest["positives"]
    # one line per truth, with darknet's cell and anchor
    inspector.image.value = 1
    for _, t, i, j, n, _ in (t for t in truths if t[0] == 1):
        assert f"truth {t} (" in inspector.summary.value
        assert f"cell i={i} j={j}, anchor {n}," in inspector.summary.value


def test_slot_details_show_darknets_delta(inspector, case):
    d, _ = case
    delta = split_entries(torch.tensor(d["delta_logit"]), 5)  # (N, A, 25, H, W)
    inspector.image.value = 0
    for label, slot in inspector.slot.options[:6]:  # positives, ignored, then negatives
        inspector.slot.value = slot
        n, j, i = slot
        text = inspector.details.value
        assert f"slot a{n} j{j} i{i}" in text and label.split(": ")[1].split(" ")[0] in text
        want = delta[0, n, :5, j, i]
        assert f"{float(want[4]):+.5f}" in text  # objectness
        assert ", ".join(f"{float(v):+.5f}" for v in want[:4]) in text  # x, y, w, h


def test_slot_menu_lists_positives_then_ignored_then_negatives(inspector):
    state = inspector.inspection.assignment.state[0]
    kinds = [int(state[s]) for _, s in inspector.slot.options]
    npos, nign = int((state == POSITIVE).sum()), int((state == IGNORED).sum())
    assert kinds == [POSITIVE] * npos + [IGNORED] * nign + [NEGATIVE] * 5


def test_seen_switches_the_prior_pull(inspector):
    neg = next(s for label, s in inspector.slot.options if "negative" in label)
    inspector.slot.value = neg
    assert "prior pull off" in inspector.summary.value and "coordinates (none)" in inspector.details.value
    inspector.seen.value = 12799
    assert "seen 12799 &lt; 12800: prior pull on" in inspector.summary.value
    assert inspector.slot.value == neg  # the chosen slot stays chosen
    assert "coordinates (prior pull)" in inspector.details.value
    assert float(inspector.inspection.assignment.coord_scale[0][neg]) == pytest.approx(PRIOR_SCALE)


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.75])
def test_threshold_moves_slots_between_ignored_and_negative(inspector, thresh):
    before = inspector.inspection.assignment  # at darknet's .6
    inspector.thresh.value = thresh
    c = counts(inspector)
    # best IoU does not depend on the threshold: the ignored slots are those above it
    assert c["thresh"] == thresh
    assert c["ignored"] == int(((before.best_iou[0] > thresh) & ~before.positive[0]).sum())
    assert c["positive"] == int(before.positive[0].sum())


def test_figure_shows_image_and_each_anchor(inspector):
    fig = inspector.figure
    assert len(fig.axes) == 1 + 5  # the image, then anchors a0..a4's slot states
    first = inspector.figure
    inspector.slot.value = inspector.slot.options[1][1]
    assert inspector.figure is not first  # redrawn for the new slot
    assert bytes(inspector.view.value[:8]) == b"\x89PNG\r\n\x1a\n"  # what the Image widget shows
    assert SUMMARY_CLASS in inspector.summary._dom_classes


def test_figure_is_the_columns_width_with_a_legend(inspector):
    """Issue 14: the PNG is the book column's pixel width (shown at its natural size, not upscaled),
    its text at least MIN_FONT points, with a legend of the slot colours."""
    from yolov2.book.viz import COLUMN_WIDTH, DPI, figure_problems

    png = bytes(inspector.view.value)
    width = int.from_bytes(png[16:20], "big")  # the IHDR chunk: width, then height
    assert COLUMN_WIDTH * DPI * 0.9 <= width <= COLUMN_WIDTH * DPI
    assert figure_problems(inspector.figure) == []
    labels = [t.get_text() for t in inspector.figure.legends[0].get_texts()]
    assert {"positive", "ignored (IoU > thresh)", "negative"} <= set(labels)


def test_ignored_boxes_are_behind_a_toggle(inspector):
    a = inspector.inspection.assignment
    assert int(a.ignored.sum()) > 0  # p02 has ignored slots
    image_axes = inspector.figure.axes[0]
    dashed = [p for p in image_axes.patches if p.get_linestyle() == "--"]
    assert dashed == []  # off by default: only truths, positives and the chosen slot
    inspector.show_ignored.value = True
    image_axes = inspector.figure.axes[0]
    dashed = [p for p in image_axes.patches if p.get_linestyle() == "--"]
    assert len(dashed) == int(a.ignored[0].sum())
    labels = [t.get_text() for t in inspector.figure.legends[0].get_texts()]
    assert "ignored slot's box" in labels


def test_mismatched_inputs_are_refused(case):
    d, _ = case
    with pytest.raises(ValueError, match="same number of images"):
        AssignmentInspector(torch.zeros(1, 3, 8, 8), torch.tensor(d["truth"]), torch.tensor(d["input"]),
                            RegionLoss(d["anchors"].reshape(-1, 2), 20), CLASSES)


def test_importing_widgets_does_not_import_ipywidgets():
    code = "import sys, yolov2.book.widgets; print('ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
