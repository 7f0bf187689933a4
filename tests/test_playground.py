"""The detection playground, headless: its controls drive `Detector.explain`, and what it shows is
what `Detector` returns with the same settings (the oracle: the package's detector, called directly)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolov2.book.playground import BOXES_CLASS, COUNT_CLASS, THRESH_CLASS, Playground
from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.data.image import read_image
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.detect.detector import Detector

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "yolov2-tiny-synth.weights"
COUNT = re.compile(rf"<span class='{BOXES_CLASS}'>(\d+)</span> boxes</b> at thresh "
                   rf"<span class='{THRESH_CLASS}'>([\d.]+)</span>")


@pytest.fixture(scope="module")
def net() -> Darknet:
    net = Darknet(stock_cfg("yolov2-tiny-synth"))
    net.load_weights(WEIGHTS)
    return net


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, np.ndarray]:
    root = make_synthetic_voc(tmp_path_factory.mktemp("synth"), 0, 4, seed=0)
    return {p.name: read_image(p) for p in sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))}


@pytest.fixture
def playground(net, images) -> Playground:
    return Playground(Detector(net, names=SYNTH_CLASSES), images)


def shown(pg: Playground) -> tuple[int, float]:
    """(boxes, thresh) as the count line says."""
    m = COUNT.search(pg.count.value)
    assert m, pg.count.value
    return int(m[1]), float(m[2])


def same(a, b) -> bool:
    return np.array_equal(a.index, b.index) and np.array_equal(a.probs, b.probs)


def test_threshold_slider_draws_what_detector_returns(playground, net, images):
    assert COUNT_CLASS in playground.count._dom_classes
    counts = {}
    for label in images:
        playground.image.value = label
        for thresh in (0.05, 0.2, 0.5, 0.8):
            playground.thresh.value = thresh
            want = Detector(net, thresh=thresh)(images[label])
            assert shown(playground) == (len(want), thresh)
            assert same(playground.detections, want)
            assert len([v for _, v in playground.box.options if v is not None]) == len(want)
            assert len(playground.figure.axes[0].patches) >= len(want)  # drawn (and removed ones)
            counts[label, thresh] = len(want)
    assert len(set(counts.values())) > 2  # the threshold changes what is drawn


@pytest.mark.parametrize("control, value, option", [("nms_kind", "obj", {"nms_kind": "obj"}),
                                                    ("letterbox", False, {"letterbox": False}),
                                                    ("nms", 0.9, {"nms": 0.9})])
def test_nms_kind_letterbox_and_nms_change_the_result_as_detector_says(playground, net, images, control,
                                                                      value, option):
    playground.thresh.value = 0.1
    changed = 0
    for label in images:
        playground.image.value = label
        getattr(playground, control).value = value
        want = Detector(net, thresh=0.1, **option)(images[label])
        assert same(playground.detections, want) and shown(playground)[0] == len(want)
        changed += not same(want, Detector(net, thresh=0.1)(images[label]))
        getattr(playground, control).value = getattr(Detector(net), control)
    assert changed >= 1  # on these images the setting matters


@pytest.mark.parametrize("nms_kind", ["sort", "obj"])
def test_removed_boxes_name_a_real_suppressor(playground, net, images, nms_kind):
    playground.thresh.value, playground.nms_kind.value = 0.1, nms_kind
    rows = 0
    for label, image in images.items():
        playground.image.value = label
        dets = playground.detections
        everything = Detector(net, thresh=0.1, nms=1.0, nms_kind=nms_kind)(image)  # no IoU is > 1
        before = dict(zip(everything.index.tolist(), everything.probs, strict=True))
        after = dict(zip(dets.index.tolist(), dets.probs, strict=True))
        for s in dets.suppressed:
            assert s.iou > playground.nms.value and s.by != s.slot
            assert all(before[s.slot][c] > 0 for c in s.classes)  # it had the class...
            assert s.slot not in after or all(after[s.slot][c] == 0 for c in s.classes)  # ...and lost it
            if nms_kind == "sort":  # the suppressor kept that class: it is a drawn box
                k = dets.index.tolist().index(s.by)
                assert after[s.by][s.classes[0]] > 0
                assert f"box {k} (slot {s.by})" in playground.removed.value
            assert f"{s.iou:.3f} &gt; 0.45" in playground.removed.value
            rows += 1
    assert rows > 5


def test_chosen_box_shows_its_probabilities_and_what_it_lost(playground, images):
    playground.thresh.value = 0.1
    for label in images:
        playground.image.value = label
        dets = playground.detections
        for k, (_, slot) in enumerate(playground.box.options):
            playground.box.value = slot
            text = playground.probabilities.value
            assert f"box {k}:" in text and f"{float(dets.objectness[k]):.4f}" in text
            for c in np.nonzero(dets.probs[k])[0]:
                assert f"{float(dets.probs[k, c]):.4f}" in text
            lost = [s for s in dets.suppressed if s.slot == slot]
            for s in lost:
                assert f"taken by box {dets.index.tolist().index(s.by)}" in text


def test_upload_a_good_and_a_bad_file(playground, net):
    image = np.zeros((60, 90, 3), np.uint8)
    image[10:50, 20:70] = (230, 40, 40)
    ok, png = cv2.imencode(".png", image[:, :, ::-1])
    assert ok
    playground.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(png),
                                "content": memoryview(png.tobytes()), "last_modified": NOW},)
    assert playground.image.value == "upload: mine.png" and playground.message.value == ""
    np.testing.assert_array_equal(playground.images["upload: mine.png"], image)
    assert same(playground.detections, Detector(net, thresh=playground.thresh.value)(image))
    playground.upload.value = ({"name": "notes.jpg", "type": "image/jpeg", "size": 5,
                                "content": memoryview(b"hello"), "last_modified": NOW},)
    message = re.sub("<[^>]+>", "", playground.message.value)
    assert message == "notes.jpg: not a decodable image (OpenCV could not read it)"
    assert playground.image.value == "upload: mine.png"  # the last good image stays
    assert "upload: notes.jpg" not in playground.images


def test_the_callers_detector_is_left_alone(net, images):
    detector = Detector(net, names=SYNTH_CLASSES)
    pg = Playground(detector, images)
    pg.thresh.value, pg.nms_kind.value, pg.letterbox.value = 0.2, "obj", False
    assert (detector.thresh, detector.nms_kind, detector.letterbox) == (0.5, "sort", True)


def test_bad_arguments(net, images):
    with pytest.raises(ValueError, match="needs class names"):
        Playground(Detector(net), images)
    with pytest.raises(ValueError, match="at least one image"):
        Playground(Detector(net, names=SYNTH_CLASSES), [])
    with pytest.raises(ValueError, match=r"expected an image path or an \(H, W, 3\) RGB array"):
        Playground(Detector(net, names=SYNTH_CLASSES), [np.zeros((4, 4))])
