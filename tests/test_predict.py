"""The predict API: `yolov2.Detector.load(cfg, weights, names=None, **options)`, called on a path, an RGB
array or a list; `Detections.labels()` and `Detections.draw()`; `Detector.read`; clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import yolov2
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.detect.detector import CommandError, Detector
from yolov2.detect.draw import draw_boxes
from yolov2.detect.postprocess import Detections

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "data" / "yolov2-tiny-synth.weights"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = make_synthetic_voc(tmp_path_factory.mktemp("predict") / "synth", 3, 0, seed=3)
    return sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load("yolov2-tiny-synth", WEIGHTS, thresh=0.3)


def test_exported_from_the_package():
    assert yolov2.Detector is Detector and yolov2.Detections is Detections
    assert {"Detector", "Detections"} <= set(yolov2.__all__)


def test_load_takes_the_names_beside_the_cfg_a_file_or_a_list(tmp_path):
    assert Detector.load("yolov2-tiny-synth", WEIGHTS).names == list(SYNTH_CLASSES)
    names = ["a", "b", "c", "d", "e"]
    assert Detector.load("yolov2-tiny-synth", WEIGHTS, names=names).names == names
    f = tmp_path / "x.names"
    f.write_text("\n".join(names) + "\n")
    assert Detector.load("yolov2-tiny-synth", WEIGHTS, names=f).names == names
    with pytest.raises(CommandError, match="3 class names, but the cfg's .region. has classes=5"):
        Detector.load("yolov2-tiny-synth", WEIGHTS, names=["a", "b", "c"])


def test_load_options_reach_the_detector():
    d = Detector.load("yolov2-tiny-synth", WEIGHTS, thresh=0.25, nms=0.3, letterbox=False, device="cpu")
    assert (d.thresh, d.nms, d.letterbox, d.device.type) == (0.25, 0.3, False, "cpu")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CommandError, match="nope.weights"):
        Detector.load("yolov2-tiny-synth", tmp_path / "nope.weights")
    with pytest.raises(CommandError, match="shipped: .*yolov2-tiny-synth"):
        Detector.load("yolov2-nothing", WEIGHTS)


def test_a_path_an_array_and_a_list(detector, images):
    rgb = Detector.read(images[0])
    assert rgb.dtype == np.uint8 and rgb.ndim == 3
    np.testing.assert_array_equal(rgb, cv2.imread(str(images[0]))[:, :, ::-1])  # RGB, not OpenCV's BGR
    one, from_path = detector(rgb), detector(images[0])
    assert isinstance(one, Detections) and len(one) > 0
    np.testing.assert_array_equal(one.boxes, from_path.boxes)
    many = detector([str(p) for p in images])
    assert isinstance(many, list) and len(many) == len(images)
    np.testing.assert_array_equal(many[0].probs, one.probs)  # batched as one image alone
    assert [d.width for d in many] == [Detector.read(p).shape[1] for p in images]


def test_labels_are_named_items_in_darknets_order(detector, images):
    d = detector(images[0])
    labels = d.labels()
    assert labels == [(SYNTH_CLASSES[c], p, box) for c, p, box in d.items()]
    name, prob, (x1, y1, x2, y2) = labels[0]
    assert name in SYNTH_CLASSES and 0.3 < prob <= 1 and x1 < x2 and y1 < y2
    bare = Detections(d.boxes, d.objectness, d.probs, d.index, d.width, d.height)
    with pytest.raises(ValueError, match="carry no class names"):
        bare.labels()
    assert bare.labels(list("abcde"))[0][0] in "abcde"


def test_draw_is_detects_drawing_in_rgb(detector, images):
    image = Detector.read(images[1])
    d = detector(image)
    drawn = d.draw(image)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn, draw_boxes(image, d, SYNTH_CLASSES)[:, :, ::-1])
    assert (drawn != image).any() == (len(d) > 0)
    with pytest.raises(ValueError, match="detections are of a"):
        d.draw(image[:10])


def test_clear_errors_for_what_is_not_an_image(detector):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB array, got shape \(5, 5\)"):
        detector(np.zeros((5, 5), np.uint8))
    with pytest.raises(TypeError, match="not a tensor"):
        detector(torch.zeros(1, 3, 416, 416))
    with pytest.raises(ValueError, match="dtype int64"):
        detector(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        detector("missing.jpg")
    with pytest.raises(TypeError, match="use yolov2.Detector.load"):
        yolov2.Darknet("yolov2-tiny-synth")("x.jpg")
    with pytest.raises(TypeError, match="Detector.load"):
        Detector("yolov2-tiny-synth")
