"""The synthetic VOC: a real devkit, deterministic, and the statistics its design promises."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolov2.data import labels, synth, voc


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "out"
    return synth.make_synthetic_voc(out, n_train=6, n_test=3, seed=7)


def test_devkit_layout_reads_as_voc(devkit):
    assert labels.read_class_names(devkit / "classes.names") == list(synth.SYNTH_CLASSES)
    main = devkit / "VOC2007/ImageSets/Main"
    assert (main / "trainval.txt").read_text() == (main / "train.txt").read_text()
    train = voc.load_voc(devkit, [("2007", "train")], synth.SYNTH_CLASSES, cache=False)
    test = voc.load_voc(devkit, [("2007", "test")], synth.SYNTH_CLASSES, cache=False)
    assert [r.image_id for r in train + test] == [f"{i:06d}" for i in range(9)]
    for r in train + test:
        im = cv2.imread(r.image_path)
        assert im.shape == (r.annotation.height, r.annotation.width, 3)


def test_same_seed_same_bytes_other_seed_other_images(devkit, tmp_path):
    again = synth.make_synthetic_voc(tmp_path / "again", 6, 3, seed=7)
    assert files(again) == files(devkit)
    fewer = files(synth.make_synthetic_voc(tmp_path / "fewer", 2, 1, seed=7))
    assert sum(p.suffix == ".jpg" for p in fewer) == 3
    for name in ("VOC2007/JPEGImages/000000.jpg", "VOC2007/Annotations/000001.xml"):  # image i of a split
        assert fewer[Path(name)] == files(devkit)[Path(name)]  # does not depend on N
    other = files(synth.make_synthetic_voc(tmp_path / "other", 6, 3, seed=8))
    jpgs = [p for p in other if p.suffix == ".jpg"]
    assert all(other[p] != files(devkit)[p] for p in jpgs)


def test_refuses_non_empty_out_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert synth.main(["--out", str(out), "--train", "1", "--test", "1"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert synth.main(["--out", str(out), "--train", "1", "--test", "1", "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside --out


@pytest.fixture(scope="module")
def sample():
    """200 rendered images (no JPEG): [(width, height, objects)]."""
    out = []
    for i in range(200):
        bgr, objects = synth.render_image(np.random.default_rng((0, 0, i)))
        out.append((bgr.shape[1], bgr.shape[0], objects))
    return out


def test_statistics(sample):
    objects = [o for _, _, objs in sample for o in objs]
    counts = collections.Counter(o.name for o in objects)
    assert set(counts) == set(synth.SYNTH_CLASSES)
    assert all(0.15 < c / len(objects) < 0.25 for c in counts.values())  # balanced, 20% each
    per_image = [len(objs) for _, _, objs in sample]
    assert 1 <= min(per_image) and max(per_image) <= 5 and 2.5 < np.mean(per_image) < 3.5
    widths, heights = zip(*[(w, h) for w, h, _ in sample], strict=True)
    assert 350 <= min(widths) and max(widths) <= 500 and 280 <= min(heights) and max(heights) <= 500
    assert np.std(widths) > 30 and np.std(heights) > 40
    difficult = np.mean([o.difficult for o in objects])
    assert 0.02 < difficult < 0.12
    assert 0.04 < np.mean([o.truncated for o in objects]) < 0.2


def test_sizes_span_tiny_to_image_filling(sample):
    side = np.array([
        max(o.xmax - o.xmin + 1, o.ymax - o.ymin + 1) / min(w, h) for w, h, objs in sample for o in objs
    ])  # fmt: skip
    assert np.mean((side >= 0.08) & (side <= 0.6)) > 0.75
    assert (side < 0.06).sum() > 5 and (side > 0.7).sum() > 5
    sizes_px = [max(o.xmax - o.xmin + 1, o.ymax - o.ymin + 1) for _, _, objs in sample for o in objs]
    assert min(sizes_px) >= 8


def _alone(o, objs) -> bool:
    """No other box overlaps or touches o's (an occluder's box ends where o's visible pixels end)."""
    return not any(
        p is not o
        and p.xmin <= o.xmax + 1
        and o.xmin <= p.xmax + 1
        and p.ymin <= o.ymax + 1
        and o.ymin <= p.ymax + 1
        for p in objs
    )


@pytest.mark.parametrize("name", synth.SYNTH_CLASSES)
def test_boxes_have_their_class_aspect(sample, name):
    """Whole, unoccluded objects are boxed at the class's aspect ratio, up to pixel rounding."""
    lo, hi = synth.ASPECTS[name]
    aspects = [
        (o.xmax - o.xmin + 1) / (o.ymax - o.ymin + 1)
        for _, _, objs in sample
        for o in objs
        if o.name == name
        and not o.truncated
        and min(o.xmax - o.xmin, o.ymax - o.ymin) > 20
        and _alone(o, objs)
    ]
    assert len(aspects) > 10
    assert lo * 0.9 <= min(aspects) and max(aspects) <= hi * 1.1


@pytest.mark.parametrize("cls, area", [(0, math.pi / 4), (1, 1.0), (2, 0.5), (3, 1.0), (4, 1.0)])
def test_shape_masks_fill_their_box(cls, area):
    box = np.array([3.0, 5.0, 83.0, 85.0])  # 80 x 80 pixels
    mask = synth.shape_mask(cls, box, (0, 0), (90, 90))
    ys, xs = np.nonzero(mask)
    assert abs(mask.sum() / 6400 - area) < 0.03
    assert (xs.min(), ys.min()) in [(3, 5), (4, 5), (3, 6), (4, 6)] and xs.max() in (82, 83)


@pytest.mark.parametrize("index", range(4))
def test_boxes_are_tight_on_drawn_pixels(index):
    """Drawn pixels differ from the background the generator drew first, lie in a box, and every box
    edge touches them; outside the objects only noise changes the background."""
    rng = np.random.default_rng((0, 0, index))
    bgr, objects, owner = synth.render_image(rng, with_owner=True)
    rng = np.random.default_rng((0, 0, index))
    w, h = int(rng.integers(350, 501)), int(rng.integers(280, 501))  # render_image's first two draws
    background = np.clip(synth.draw_background(rng, w, h), 0, 1)[..., ::-1] * 255  # (H, W, 3) BGR
    diff = np.abs(bgr - background).mean(-1)  # (H, W)
    assert diff[owner == 0].mean() < 0.06 * 255  # noise only
    assert diff[owner > 0].mean() > 0.15 * 255
    inside = np.zeros_like(owner, bool)
    for o in objects:
        x0, y0, x1, y1 = int(o.xmin) - 1, int(o.ymin) - 1, int(o.xmax) - 1, int(o.ymax) - 1  # 0-based
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        box = owner[y0 : y1 + 1, x0 : x1 + 1] > 0
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
    assert inside[owner > 0].mean() > 0.999
