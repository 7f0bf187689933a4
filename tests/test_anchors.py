"""Dimension clusters: IoU k-means on toy distributions, the paper's comparison, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolov2.darknet.boxes import box_iou
from yolov2.darknet.cfg import parse_cfg, stock_cfg
from yolov2.data import anchors, labels, synth, voc


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOV2_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache


def clusters(rng, centres, n=200, spread=0.03):
    """Boxes scattered multiplicatively around each (w, h) centre: (len(centres) * n, 2)."""
    return np.concatenate([c * np.exp(rng.normal(0, spread, size=(n, 2))) for c in centres])


def mixed_scales(rng, n=3000):
    """VOC-like sizes: log-uniform scale over 20x, aspect ratio 1:3..3:1."""
    scale = np.exp(rng.uniform(np.log(0.03), np.log(0.6), n))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
    return np.stack([scale * np.sqrt(aspect), scale / np.sqrt(aspect)], 1)


def test_wh_iou_is_darknet_iou_of_centred_boxes():
    rng = np.random.default_rng(0)
    wh, a = rng.uniform(0.01, 1, (50, 2)), rng.uniform(0.01, 1, (7, 2))
    zeros = torch.zeros(50, 7, 2, dtype=torch.float64)
    boxes = torch.cat([zeros, torch.from_numpy(wh)[:, None].expand(50, 7, 2)], -1)
    priors = torch.cat([zeros, torch.from_numpy(a)[None].expand(50, 7, 2)], -1)
    np.testing.assert_allclose(anchors.wh_iou(wh, a), box_iou(boxes, priors).numpy(), rtol=1e-12)


def test_recovers_three_tight_clusters():
    centres = np.array([[0.05, 0.05], [0.4, 0.1], [0.15, 0.5]])  # square, wide, tall
    wh = clusters(np.random.default_rng(1), centres)
    found = anchors.iou_kmeans(wh, 3, seed=0)
    order = np.argsort(centres.prod(1))  # iou_kmeans sorts by area
    np.testing.assert_allclose(found, centres[order], rtol=0.02)
    assert anchors.mean_iou(wh, found) > 0.93


def test_one_cluster_is_the_mean_box():
    wh = mixed_scales(np.random.default_rng(2), 500)
    np.testing.assert_allclose(anchors.iou_kmeans(wh, 1), wh.mean(0, keepdims=True), rtol=1e-12)


def test_iou_clusters_beat_euclidean_on_mixed_scales():
    """The paper's Table 1 point: Euclidean error is dominated by large boxes, IoU is scale-free."""
    wh = mixed_scales(np.random.default_rng(3))
    iou = anchors.mean_iou(wh, anchors.iou_kmeans(wh, 5, seed=0))
    euclid = anchors.mean_iou(wh, anchors.euclidean_kmeans(wh, 5, seed=0))
    assert iou > euclid + 0.02


def test_mean_iou_grows_with_k():
    wh = mixed_scales(np.random.default_rng(4), 1500)
    curve = anchors.mean_iou_curve(wh, range(1, 11))
    assert np.all(np.diff(curve) > -0.005) and curve[-1] > curve[0] + 0.25


def test_deterministic_for_a_seed_and_cells():
    wh = mixed_scales(np.random.default_rng(5), 800)
    np.testing.assert_array_equal(anchors.iou_kmeans(wh, 5, seed=3), anchors.iou_kmeans(wh, 5, seed=3))
    np.testing.assert_allclose(anchors.to_cells(np.array([[0.25, 0.5]]), 416), [[3.25, 6.5]])
    assert anchors.format_anchors(np.array([[1.0, 2.345], [3, 4]])) == "1.00,2.35,  3.00,4.00"


@pytest.mark.parametrize(
    "wh, k", [(np.ones((3, 2)), 5), (np.array([[0.1, 0.0], [0.2, 0.2]]), 1), (np.ones(4), 1)]
)
def test_bad_input(wh, k):
    with pytest.raises(ValueError, match="positive"):
        anchors.iou_kmeans(wh, k)


def test_voc07_test_clusters_match_the_paper(shared):
    """Paper Table 1: 5 IoU clusters reach 61.0 mean IoU; darknet's yolov2-voc anchors do so here too,
    and clusters fitted on this very set a little more."""
    wh = anchors.dataset_wh(shared("voc2007_test"), list(voc.TEST_SETS), voc.VOC_CLASSES)
    assert len(wh) == 14976 - 2944  # the non-difficult boxes darknet trains on
    darknet = cfg_anchors("yolov2-voc")
    ours = anchors.iou_kmeans(wh, 5)
    assert 0.60 < anchors.mean_iou(wh, darknet) < 0.62 < anchors.mean_iou(wh, ours)


def test_cli_on_synthetic_data(tmp_path, capsys):
    root = synth.make_synthetic_voc(tmp_path / "synth", 40, 0, seed=1)
    assert anchors.main(["--data", str(root), "--k", "5", "--sets", "2007/train"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("IoU k-means"))
    cells = np.array([float(v) for v in line.split("anchors = ")[1].replace(" ", "").split(",")]).reshape(
        -1, 2
    )
    wh = anchors.dataset_wh(root, [("2007", "train")], synth.SYNTH_CLASSES)
    assert cells.shape == (5, 2)
    np.testing.assert_allclose(cells, anchors.to_cells(anchors.iou_kmeans(wh, 5), 416), atol=0.005)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sets", "2007"], "YEAR/SET"),
        (["--sets", "2007/val"], "cannot read image set"),
        (["--k", "999"], "fewer than"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    root = synth.make_synthetic_voc(tmp_path / "synth", 3, 0, seed=1)
    assert anchors.main(["--data", str(root), *args]) == 2
    assert message in capsys.readouterr().err


def cfg_anchors(name: str) -> np.ndarray:
    """A stock cfg's anchors, normalised: (A, 2) cells / 13 (the 416 network's grid)."""
    return np.array(parse_cfg(stock_cfg(name))[-1].get_list("anchors", float)).reshape(-1, 2) / 13


def test_synth_cfg_anchors_fit_the_synthetic_boxes():
    """yolov2-tiny-synth.cfg's anchors (from the command in its header) are as good on a fresh sample of
    the synthetic training images as clusters fitted to that sample, and beat the VOC anchors."""
    rows = []
    for i in range(200):  # the first 200 training images of `synth --seed 0`, without JPEG
        bgr, objects = synth.render_image(np.random.default_rng((0, 0, i)))
        annotation = voc.Annotation(f"{i:06d}.jpg", bgr.shape[1], bgr.shape[0], objects)
        rows.append(labels.darknet_label_rows(annotation, synth.SYNTH_CLASSES))
    wh = np.concatenate(rows)[:, 3:5]
    ours = anchors.mean_iou(wh, cfg_anchors("yolov2-tiny-synth"))
    assert ours > anchors.mean_iou(wh, anchors.iou_kmeans(wh, 5)) - 0.01
    assert ours > anchors.mean_iou(wh, cfg_anchors("yolov2-tiny-voc")) + 0.05
