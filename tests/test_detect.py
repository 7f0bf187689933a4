"""Detection post-processing against darknet's own numbers (golden E), the Detector, and the commands."""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from yolov2.__main__ import main as cli
from yolov2.darknet.boxes import box_iou_matrix
from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.darknet.region import activate, split_entries
from yolov2.darknet.ulp import BOX_ULPS, NET_RANGE_BOUND, Nudged, assert_ulps, iou_error_bound, ulp
from yolov2.data.image import letterbox_image, read_image, resize_image
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.data.voc import VOC_CLASSES
from yolov2.detect.detector import Detector
from yolov2.detect.evaluate import evaluate_detections, load_annotations
from yolov2.detect.postprocess import (
    Detections,
    comp4_lines,
    correct_region_boxes,
    detections_from_output,
    do_nms_obj,
    do_nms_sort,
    draw_lines,
    nms_partition,
    region_boxes,
    region_scores,
    results_from_detections,
    to_pixels,
)

E_DIR = ("golden", "prepost", "E_postprocess")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
E_CASES = ["E_tiny_416x416", "E_tiny_320x320", "E_voc_416x416", "E_voc_320x320", "E_tiny_e2e_validate"]


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def parse_line(line: str) -> tuple[str, str, np.ndarray]:
    image_id, prob, *coords = line.split()
    return image_id, prob, np.array(coords, dtype=np.float64)


def assert_comp4_close(got: dict, want: dict, coord_atol: float, prob_atol: float = 0.0) -> None:
    """Same lines per class in the same order; prob strings exact (or within prob_atol); coordinates close."""
    for c in want:
        assert len(got[c]) == len(want[c]), c
        for a, b in zip(got[c], want[c], strict=True):
            (ia, pa, ca), (ib, pb, cb) = parse_line(a), parse_line(b)
            same_prob = pa == pb if prob_atol == 0 else abs(float(pa) - float(pb)) <= prob_atol
            assert ia == ib and same_prob, (a, b)
            np.testing.assert_allclose(ca, cb, rtol=0, atol=coord_atol, err_msg=f"{a} vs {b}")


# --------------------------------------------------------------------------- golden E


def corner_atol(im_w: int, im_h: int) -> float:
    """How far a comp4 corner (x ± w/2, VOC's +1, clipped) of our boxes can be from darknet's, in
    pixels: BOX_ULPS of the image size for x, half of BOX_ULPS for w/2, and %f's half units."""
    return float(1.5 * BOX_ULPS * ulp(max(im_w, im_h)) + 1e-6)


def assert_nms_decidable(boxes: np.ndarray, obj: np.ndarray, prob: np.ndarray, nms: float, err) -> None:
    """No IoU that NMS compares (two kept boxes sharing a class) lies within reach of boxes off by
    err: then NMS on any boxes within err of these decides the same (so must give darknet's result)."""
    live = obj > 0
    b = torch.from_numpy(boxes[live]).double()
    share = torch.from_numpy(prob[live] > 0).double()
    pairs = (share @ share.T > 0) & ~torch.eye(len(b), dtype=torch.bool)  # (K, K)
    margin = (box_iou_matrix(b, b) - nms).abs()
    reach = iou_error_bound(b, torch.from_numpy(np.asarray(err)[live]))
    close = pairs & (margin <= reach)
    assert not close.any(), f"{int(close.sum())} NMS overlaps within float reach of {nms}"


def e_settings(d, manifest_case: dict | None) -> list[dict]:
    return json.loads(str(d["settings_json"])) if manifest_case is None else manifest_case["settings"]


def check_e_setting(d, s: dict, e2e: bool, device: str = "cpu") -> None:
    """One golden setting: boxes, scores, NMS, order, comp4 and draw lines, from darknet's region_output."""
    tag, im_w, im_h = s["tag"], s["im_w"], s["im_h"]
    if e2e:
        bbox, pre_obj, pre_prob = (d[f"{tag}_{k}"] for k in ("bbox", "pre_obj", "pre_prob"))
    else:
        bbox, pre_obj, pre_prob = d[s["bbox_key"]], d[s["pre_keys"][0]], d[s["pre_keys"][1]]
    output, anchors = t(d["region_output"]).to(device), t(d["anchors"]).view(-1, 2).to(device)
    netw, neth = int(d["net_w"]), int(d["net_h"])
    boxes = correct_region_boxes(region_boxes(output, anchors), im_w, im_h, netw, neth)
    if not s["relative"]:
        boxes = to_pixels(boxes, im_w, im_h)
    boxes = boxes[0].cpu().numpy()
    # x, y in ulps of the image scale (the letterbox shift subtracts), w, h in ulps of themselves
    scale = np.array([1.0, 1.0, 0, 0]) if s["relative"] else np.array([im_w, im_h, 0, 0], float)
    assert_ulps(boxes, bbox, BOX_ULPS, floor=scale, what=f"{tag} boxes")
    obj, prob = region_scores(output, anchors.shape[0], s["thresh"])  # the same float products: exact
    np.testing.assert_array_equal(obj[0].cpu().numpy(), pre_obj)
    np.testing.assert_array_equal(prob[0].cpu().numpy(), pre_prob)
    assert_nms_decidable(bbox, pre_obj, pre_prob, s["nms"], BOX_ULPS * ulp(np.maximum(np.abs(bbox), scale)))

    obj_nms = s.get("nms_kind", "do_nms_sort") == "do_nms_obj"
    post, order = d[f"{tag}_post_prob"], d[f"{tag}_post_order"]
    for b in (bbox, boxes):  # darknet's boxes, then ours (no NMS decision within their difference)
        if obj_nms:
            got_obj, got, got_order = do_nms_obj(t(b)[None].to(device), obj, prob, s["nms"])
            np.testing.assert_array_equal(got_obj[0].cpu().numpy(), d[f"{tag}_post_obj"])
        else:
            got, got_order = do_nms_sort(t(b)[None].to(device), obj, prob, s["nms"])
        np.testing.assert_array_equal(got[0].cpu().numpy(), post)
        np.testing.assert_array_equal(got_order[0].cpu().numpy(), order)

    kept = order[(post[order] != 0).any(-1)]
    if f"{tag}_comp4_json" in d.files:
        want = json.loads(str(d[f"{tag}_comp4_json"]))
        assert comp4_lines("000001", bbox[kept], post[kept], im_w, im_h, VOC_CLASSES) == want
        ours = comp4_lines("000001", boxes[kept], post[kept], im_w, im_h, VOC_CLASSES)
        assert_comp4_close(ours, want, coord_atol=corner_atol(im_w, im_h))
    if f"{tag}_draw_lines" in d.files:
        want = [line for line in str(d[f"{tag}_draw_lines"]).split("\n") if line]
        assert draw_lines(post[kept], s["thresh"], VOC_CLASSES) == want


@pytest.mark.parametrize("device", DEVICES)
def test_golden_e_fixture(device):
    """The copied subset of E_tiny_320x320 (always available)."""
    d = np.load(FIXTURES / "prepost_e" / "E_tiny_320x320_subset.npz")
    settings = e_settings(d, None)
    assert [s["tag"] for s in settings] == ["land_t24", "comp4_land"]
    for s in settings:
        check_e_setting(d, s, e2e=False, device=device)


@pytest.mark.parametrize("case", E_CASES)
def test_golden_e(shared, case):
    manifest = json.loads(shared("golden", "prepost", "manifest.json").read_text())
    entry = next(e for e in manifest["E_postprocess"] if e["case"] == case)
    d = np.load(shared(*E_DIR, f"{case}.npz"))
    for s in e_settings(d, entry):
        check_e_setting(d, s, e2e="e2e" in case)


# --------------------------------------------------------------------------- NMS by hand


def darknet_swap_loop(nonzero: np.ndarray) -> np.ndarray:
    """do_nms_sort's partition, statement by statement (the oracle)."""
    idx, k, i = list(range(len(nonzero))), len(nonzero) - 1, 0
    while i <= k:
        if not nonzero[idx[i]]:
            idx[i], idx[k] = idx[k], idx[i]
            k -= 1
        else:
            i += 1
    return np.array(idx, dtype=np.int64)


def test_partition_equals_darknet_swap_loop():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        nonzero = rng.random(rng.integers(0, 14)) < rng.random()
        np.testing.assert_array_equal(nms_partition(nonzero), darknet_swap_loop(nonzero))


def darknet_nms_sort(boxes: np.ndarray, obj: np.ndarray, prob: np.ndarray, nms: float):
    """do_nms_sort statement by statement on one image (the oracle): partition, then per class sort + loop."""
    dets = [int(i) for i in darknet_swap_loop(obj != 0)]
    dets = dets[:int((obj != 0).sum())]
    prob = prob.copy()
    iou = box_iou_matrix(t(boxes), t(boxes)).numpy()
    for k in range(prob.shape[1]):
        dets = sorted(dets, key=lambda i: -prob[i, k])  # stable, like glibc's merge sort
        for a, i in enumerate(dets):
            if prob[i, k] == 0:
                continue
            for j in dets[a + 1:]:
                if iou[i, j] > np.float32(nms):
                    prob[j, k] = 0
    return prob


def test_vectorised_nms_equals_darknet_loops():
    """Many boxes (several 64-bit words of overlaps), ties, zero objectness, two images at once."""
    rng = np.random.default_rng(0)
    n, c = 300, 4
    xy = rng.uniform(0, 1, (2, n, 2))
    boxes = np.concatenate([xy, rng.uniform(0.05, 0.3, (2, n, 2))], -1).astype(np.float32)
    obj = np.where(rng.random((2, n)) < 0.7, rng.uniform(0.1, 1, (2, n)), 0).astype(np.float32)
    prob = np.round(rng.random((2, n, c)), 1).astype(np.float32) * (obj[..., None] != 0)  # many ties
    post, _ = do_nms_sort(t(boxes), t(obj), t(prob), 0.3)
    for b in range(2):
        want = darknet_nms_sort(boxes[b], obj[b], prob[b], 0.3)
        np.testing.assert_array_equal(post[b].numpy(), want)
        assert (want != 0).sum() > 100 and (prob[b] != 0).sum() - (want != 0).sum() > 100  # both happen


def test_per_class_nms_keeps_a_box_for_another_class():
    # A and B overlap (IoU .6); C is far away. Class 0: A > B; class 1: B > A.
    boxes = t(np.array([[0.3, 0.5, 0.2, 0.2], [0.32, 0.5, 0.2, 0.2], [0.8, 0.5, 0.1, 0.1]], np.float32))[None]
    obj = t(np.array([0.95, 0.9, 0.6], np.float32))[None]
    prob = t(np.array([[0.9, 0.6], [0.8, 0.7], [0.5, 0.55]], np.float32))[None]
    post, order = do_nms_sort(boxes, obj, prob, 0.45)
    np.testing.assert_array_equal(post[0].numpy(), np.array([[0.9, 0], [0, 0.7], [0.5, 0.55]], np.float32))
    assert order[0].tolist() == [1, 0, 2]  # sorted by class 1 last, with the probabilities before NMS
    # class-agnostic (do_nms_obj): B loses everything, A keeps class 1 as well
    obj_post, prob_post, _ = do_nms_obj(boxes, obj, prob, 0.45)
    np.testing.assert_array_equal(obj_post[0].numpy(), np.array([0.95, 0, 0.6], np.float32))
    want = np.array([[0.9, 0.6], [0, 0], [0.5, 0.55]], np.float32)
    np.testing.assert_array_equal(prob_post[0].numpy(), want)


def test_nms_threshold_is_strict_and_suppressed_boxes_do_not_suppress():
    # widths 2, centres 1 apart: IoU(A, B) = IoU(B, C) = 1/3, IoU(A, C) = 0
    boxes = t(np.array([[1.0, 0, 2, 1], [2.0, 0, 2, 1], [3.0, 0, 2, 1]], np.float32))[None]
    obj = t(np.ones(3, np.float32))[None]
    prob = t(np.array([[0.9], [0.8], [0.7]], np.float32))[None]
    post, _ = do_nms_sort(boxes, obj, prob, float(np.float32(1 / 3)))  # IoU == nms: nothing suppressed
    assert (post[0, :, 0] > 0).tolist() == [True, True, True]
    post, _ = do_nms_sort(boxes, obj, prob, 0.3)  # A suppresses B; B, suppressed, cannot suppress C
    assert (post[0, :, 0] > 0).tolist() == [True, False, True]


# --------------------------------------------------------------------------- boxes and lines by hand


def one_box_output(tx: float, ty: float, obj: float = 0.9, side: int = 2) -> torch.Tensor:
    """Activated output (1, 1*(5+2), side, side): one anchor (1, 1), a box in cell (0, 0), class 0."""
    out = torch.zeros(1, 7, side, side)
    out[0, :, 0, 0] = torch.tensor([tx, ty, 0.0, 0.0, obj, 1.0, 0.0])
    return out


def test_letterbox_correction_and_plain_resize():
    anchors = torch.ones(1, 2)
    # 353x500 in 416x416: new size 293x416, 123 px of padding, pasted at 61 but undone at 61.5
    out = one_box_output(0.5, 0.5, side=13)
    x_net = (0 + 0.5) / 13
    size = np.array([[353, 500]])
    [d] = detections_from_output(out, anchors, size, 416, 416, 0.5)
    assert d.boxes[0, 0] == pytest.approx((x_net - 61.5 / 416) / (293 / 416) * 353, rel=1e-6)
    assert d.boxes[0, 1] == pytest.approx(x_net * 500, rel=1e-6)  # no vertical padding
    assert d.boxes[0, 2] == pytest.approx(1 / 13 * 416 / 293 * 353, rel=1e-6)
    # plain resize: relative to the network input is relative to the image
    [d] = detections_from_output(out, anchors, size, 416, 416, 0.5, letterbox=False)
    np.testing.assert_allclose(d.boxes[0], [x_net * 353, x_net * 500, 353 / 13, 500 / 13], rtol=1e-6)
    # (w, h) = network size: the correction is the identity, bit for bit
    boxes = region_boxes(out, anchors)
    assert torch.equal(correct_region_boxes(boxes, 416, 416, 416, 416), boxes)


@pytest.mark.parametrize("nms_kind", ["sort", "obj"])
def test_no_detections(nms_kind):
    out = one_box_output(0.5, 0.5, obj=0.4)  # objectness below .5: nothing at all
    dets = detections_from_output(out.repeat(2, 1, 1, 1), torch.ones(1, 2), np.array([[10, 10], [20, 30]]),
                                  64, 64, 0.5, nms_kind=nms_kind)
    assert [len(d) for d in dets] == [0, 0] and dets[1].probs.shape == (0, 2)
    assert dets[0].comp4_lines("x", ["a", "b"]) == {"a": [], "b": []}


def test_comp4_clipping_and_format():
    boxes = np.array([[5, 5, 20, 4], [95, 40, 20, 10], [-20, 40, 4, 10]], np.float32)  # pixel centre-size
    probs = np.array([[0.5, 0], [0, 0.25], [0.125, 0.75]], np.float32)
    d = Detections(boxes, np.ones(3, np.float32), probs, np.arange(3), 100, 80)
    assert d.comp4_lines("img", ["a", "b"]) == {
        "a": ["img 0.500000 1.000000 4.000000 16.000000 8.000000",  # xmin -4 -> 1
              "img 0.125000 1.000000 36.000000 -17.000000 46.000000"],  # xmax -17: darknet leaves it
        "b": ["img 0.250000 86.000000 36.000000 100.000000 46.000000",  # xmax 106 -> width
              "img 0.750000 1.000000 36.000000 -17.000000 46.000000"]}
    assert d.draw_lines(0.2, ["a", "b"]) == ["a: 50%", "b: 25%", "b: 75%"]
    assert [c for c, _, _ in d.items()] == [0, 1, 0, 1]


# --------------------------------------------------------------------------- the Detector


@pytest.fixture(scope="module")
def synth_net() -> Darknet:
    torch.manual_seed(0)
    return Darknet(stock_cfg("yolov2-tiny-synth")).eval()


def random_images(seed=0, sizes=((353, 500), (500, 375), (37, 61))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]


@pytest.mark.parametrize("device", DEVICES)
def test_batched_postprocessing_equals_one_image_at_a_time(synth_net, device):
    det = Detector(copy.deepcopy(synth_net), thresh=0.005, device=device)
    images = random_images()
    inputs = torch.from_numpy(np.stack([det.preprocess(im) for im in images]).transpose(0, 3, 1, 2).copy())
    output = det.forward(inputs)
    sizes = np.array([(im.shape[1], im.shape[0]) for im in images])
    anchors = det.net.anchors
    batched = detections_from_output(output, anchors, sizes, 416, 416, 0.005)
    for k, d in enumerate(batched):
        [one] = detections_from_output(output[k:k + 1], anchors, sizes[k:k + 1], 416, 416, 0.005)
        assert len(d) > 10
        for f in ("boxes", "objectness", "probs", "index"):
            np.testing.assert_array_equal(getattr(d, f), getattr(one, f))
    # and the Detector's one-call path gives the same (up to the batched conv's float sums)
    for d, ref in zip(det(images), batched, strict=True):
        np.testing.assert_allclose(d.boxes, ref.boxes, rtol=1e-4, atol=1e-3)


def test_detector_arguments(synth_net):
    with pytest.raises(ValueError, match="precision 'fp16' is not supported"):
        Detector(synth_net, precision="fp16")
    with pytest.raises(ValueError, match="nms_kind"):
        Detector(synth_net, nms_kind="soft")
    assert Detector(synth_net)([]) == []
    im = random_images()[1]
    resized = Detector(synth_net, letterbox=False).preprocess(im)
    np.testing.assert_array_equal(resized, resize_image(im, 416, 416))
    np.testing.assert_array_equal(Detector(synth_net).preprocess(im), letterbox_image(im, 416, 416))


def golden_e2e_net(shared) -> Darknet:
    """net/tiny with E's modified last conv, and darknet's CPU batch norm (the E files' build)."""
    net = Darknet(shared("golden", "net", "tiny", "model.cfg"))
    net.load_weights(shared("golden", "net", "tiny", "model.weights"))
    mod = np.load(shared(*E_DIR, "E_tiny_416x416.npz"))
    with torch.no_grad():
        for layer in net.conv_layers():
            if layer.bn is not None:  # normalize_cpu: /(sqrt(var) + 1e-6) == /sqrt(var' + 1e-5)
                var = layer.bn.running_var.double()
                layer.bn.running_var.copy_((var.sqrt() + 1e-6) ** 2 - 1e-5)
        last = net.layers[net.head].conv
        last.weight.copy_(t(mod["mod_last_conv_weights"]))
        last.bias.copy_(t(mod["mod_last_conv_biases"]))
    return net.eval()


def fragile_slots(d, tag: str, thresh: float, nms: float, eps: float) -> set[int]:
    """Slots of darknet's E case whose detection a logit error of eps could change: objectness or a
    class probability within reach of thresh, a same-class overlap within reach of nms, or two
    overlapping boxes of one class whose probabilities could swap rank (darknet's region_output and
    pixel boxes; σ moves by eps/4, obj·p by 3·eps relative, a box side by eps relative)."""
    out = split_entries(t(d["region_output"]).double(), 5)[0]  # (A, 5+C, H, W)
    grid_h, grid_w = out.shape[-2:]
    obj = out[:, 4].flatten()  # (n,) slot order a, row, col
    prob = obj[:, None] * out[:, 5:].permute(0, 2, 3, 1).reshape(obj.numel(), -1)  # (n, C)
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    near = (logit(obj) - logit(torch.tensor(thresh))).abs() <= eps
    near |= ((prob.log() - np.log(thresh)).abs() <= 3 * eps).any(1)
    live = (prob > thresh * (1 - 3 * eps)).double()  # (n, C) kept, or within reach of being kept
    b = torch.from_numpy(d[f"{tag}_bbox"]).double()  # (n, 4) pixel centre-size
    cell = max(int(d["im_w"]), int(d["im_h"])) / min(grid_w, grid_h)
    err = torch.stack((torch.full_like(b[:, 0], eps / 4 * cell), torch.full_like(b[:, 0], eps / 4 * cell),
                       eps * b[:, 2], eps * b[:, 3]), 1) * 1.01
    iou, reach = box_iou_matrix(b, b), iou_error_bound(b, err)
    pairs = (live @ live.T > 0) & ~torch.eye(len(b), dtype=torch.bool)
    rank = ((prob.log()[:, None] - prob.log()[None]).abs() <= 6 * eps).any(-1)  # (n, n), some class
    close = pairs & (((iou - nms).abs() <= reach) | ((iou > nms - reach) & rank))
    return set(torch.nonzero(near).flatten().tolist()) | set(torch.nonzero(close)[:, 0].tolist())


def assert_lines_match_darknet(dets, d, tag: str, eps: float) -> int:
    """Ours (Detections from a recomputed network, its logits within eps of darknet's) against
    darknet's comp4 lines, slot by slot, leaving out fragile_slots; the order of lines is not
    compared (darknet's array order, after its last class's sort, moves with near ties).
    Returns how many lines were compared."""
    im_w, im_h = int(d["im_w"]), int(d["im_h"])
    post, order = d[f"{tag}_post_prob"], d[f"{tag}_post_order"]
    kept = order[(post[order] != 0).any(-1)]
    want = json.loads(str(d[f"{tag}_comp4_json"]))
    got = dets.comp4_lines("000001", VOC_CLASSES)
    skip = fragile_slots(d, tag, 0.005, 0.45, eps)
    size = max(im_w, im_h)
    compared = 0
    for k, c in enumerate(VOC_CLASSES):
        theirs = dict(zip(kept[post[kept, k] > 0].tolist(), want[c], strict=True))
        ours = dict(zip(dets.index[dets.probs[:, k] > 0].tolist(), got[c], strict=True))
        assert set(theirs) - skip == set(ours) - skip, c
        for slot in set(theirs) - skip:
            (ia, pa, *ca), (ib, pb, *cb) = theirs[slot].split(), ours[slot].split()
            assert ia == ib and abs(float(pa) - float(pb)) <= 3 * eps * float(pa) + 1e-6, (c, slot)
            np.testing.assert_allclose(np.array(cb, float), np.array(ca, float), rtol=0,
                                       atol=eps * size + corner_atol(im_w, im_h))
            compared += 1
    return compared


def e2e_detections(net, image):
    """validate_detector's Detections of one image through the recomputed network, and the logit
    error eps the chain tolerance allows it (NET_RANGE_BOUND of the logits' range)."""
    det = Detector(net, thresh=0.005, relative=False)
    x = torch.from_numpy(det.preprocess(image).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        logits = det.net(x)
    return det, logits, NET_RANGE_BOUND * float(logits.abs().max())


def test_golden_end_to_end_validate(shared):
    """image -> letterbox -> network -> validate_detector's lines, against darknet's (E_tiny_e2e_validate).

    The network is recomputed, within the chain tolerance (yolov2.darknet.ulp.NET_RANGE_BOUND), so
    the lines are compared where that error cannot reach a decision, and the comparison is shown
    to hold with the logits nudged by as much again."""
    d = np.load(shared(*E_DIR, "E_tiny_e2e_validate.npz"))
    image = np.load(shared("golden", "prepost", "images", "P2_500x375.npz"))["image"]
    det, logits, eps = e2e_detections(golden_e2e_net(shared), image)
    output = activate(logits, 5)  # σ and the softmax move by at most half the logits' error
    np.testing.assert_allclose(output.numpy(), d["region_output"], atol=eps / 2, rtol=0)
    [dets] = det([image])
    assert assert_lines_match_darknet(dets, d, "comp4_e2e", eps) >= 470 / 2  # of darknet's 470
    fused = det.net
    for seed in range(2):  # another machine, further off: still within 2·eps of darknet's
        det.net = Nudged(fused, NET_RANGE_BOUND, seed)
        assert_lines_match_darknet(det([image])[0], d, "comp4_e2e", 2 * eps)


# --------------------------------------------------------------------------- commands


def run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli(argv)
    return rc, buf.getvalue()


@pytest.fixture
def synth_files(tmp_path, synth_net) -> dict[str, Path]:
    weights = tmp_path / "synth.weights"
    synth_net.save_weights(weights)
    names = tmp_path / "synth.names"
    names.write_text("circle\nsquare\ntriangle\nstar\ncross\n")
    return {"cfg": stock_cfg("yolov2-tiny-synth"), "weights": weights, "names": names}


def write_images(folder: Path, images: list[np.ndarray], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in names]
    for p, im in zip(paths, images, strict=True):  # PNG bytes whatever the name (lossless); decoders sniff
        p.write_bytes(cv2.imencode(".png", np.ascontiguousarray(im[:, :, ::-1]))[1].tobytes())
    return paths


def test_detect_command(tmp_path, synth_files, synth_net, capsys):
    images = random_images()
    paths = write_images(tmp_path / "in", images, ["a.png", "b.jpg", "c.png"])
    base = ["detect", "--cfg", str(synth_files["cfg"]), "--weights", str(synth_files["weights"]),
            "--names", str(synth_files["names"]), "--thresh", "0.02"]
    rc, text = run_cli([*base, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json"])
    assert rc == 0
    got = json.loads(text)
    want = Detector(synth_net, thresh=0.02)(images)
    assert [g["image"] for g in got] == [str(p) for p in paths]
    for g, w in zip(got, want, strict=True):
        assert len(g["detections"]) == len(w.items()) > 0
        assert [x["prob"] for x in g["detections"]] == [p for _, p, _ in w.items()]
    for p in paths:
        drawn = cv2.imread(str(tmp_path / "out" / p.name))
        assert drawn.shape == cv2.imread(str(p)).shape and not np.array_equal(drawn, cv2.imread(str(p)))
    # refuses to overwrite results (unless --force) and never the inputs
    assert cli([*base, str(paths[0]), "--out", str(tmp_path / "out")]) == 1
    assert "a.png: exists (use --force to overwrite)" in capsys.readouterr().err
    assert run_cli([*base, str(paths[0]), "--out", str(tmp_path / "out"), "--force"])[0] == 0
    assert cli([*base, str(paths[0]), "--out", str(tmp_path / "in"), "--force"]) == 1
    assert "would overwrite an input image" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ("missing", "nope.png: no such image or folder"),
    ("names", "the cfg's [region] has classes=5: give the class names"),  # a cfg with no .names beside it
    ("broken", "broken.jpg: not a decodable image"),
    ("weights", "none.weights: weights file not found"),
])
def test_detect_command_errors(tmp_path, synth_files, capsys, change, message):
    write_images(tmp_path, random_images()[:1], ["x.png"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    weights = tmp_path / "none.weights" if change == "weights" else synth_files["weights"]
    names = [] if change == "names" else ["--names", str(synth_files["names"])]
    image = {"missing": "nope.png", "broken": "broken.jpg"}.get(change, "x.png")
    cfg = tmp_path / "copy.cfg"
    cfg.write_bytes(synth_files["cfg"].read_bytes())
    assert cli(["detect", "--cfg", str(cfg), "--weights", str(weights), *names,
                str(tmp_path / image)]) == 1
    assert message in capsys.readouterr().err


def make_voc(root: Path, images: dict[str, np.ndarray], objects: dict[str, list[tuple]]) -> None:
    """VOC2007 devkit: JPEGImages/<id>.jpg (PNG bytes: lossless), Annotations, ImageSets/Main/test.txt."""
    base = root / "VOC2007"
    write_images(base / "JPEGImages", list(images.values()), [f"{i}.jpg" for i in images])
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for i, im in images.items():
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
                       f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
                       for n, a, b, c, e in objects[i])
        (base / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>{im.shape[1]}</width><height>{im.shape[0]}</height></size>{objs}</annotation>")
    (base / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in images))


def truth_from(dets: Detections, class_names: list[str], every: int = 3) -> list[tuple]:
    """Ground truth made of every `every`-th detection's box (rounded), so the AP is neither 0 nor 1."""
    out = []
    for c, _, box in dets.items()[::every]:
        x1, y1, x2, y2 = np.round(np.clip(box, 1, [dets.width, dets.height] * 2)).astype(int).tolist()
        if x2 > x1 and y2 > y1:
            out.append((class_names[c], x1, y1, x2, y2))
    return out


def assert_same_ap(got: dict, want: dict) -> None:
    assert got["map"] == pytest.approx(want["map"], abs=1e-9)
    assert got["ap"].keys() == want["ap"].keys()
    for c, ap in want["ap"].items():
        assert got["ap"][c] == (None if ap is None else pytest.approx(ap, abs=1e-9)), c


def valid_then_eval(tmp_path: Path, argv: list[str], classes_file: Path | None = None) -> dict:
    assert run_cli(["valid", *argv, "--voc-root", str(tmp_path), "--out", str(tmp_path / "results")])[0] == 0
    extra = ["--classes", str(classes_file)] if classes_file else []
    rc, _ = run_cli(["eval", "--voc-root", str(tmp_path), "--results", str(tmp_path / "results"),
                     "--json", str(tmp_path / "ap.json"), *extra])
    assert rc == 0
    return json.loads((tmp_path / "ap.json").read_text())


def test_valid_then_eval_equals_in_memory(tmp_path, synth_files, synth_net):
    """Round trip: `valid` files read back by `eval` give the mAP of evaluating the detections in memory."""
    names = synth_files["names"].read_text().split()
    images = dict(zip(["000001", "000002", "000003"], random_images(1), strict=True))
    detector, ims = Detector(synth_net, thresh=0.005, relative=False), list(images.values())
    dets = dict(zip(images, detector(ims[:2]) + detector(ims[2:]), strict=True))  # valid's batches of 2
    make_voc(tmp_path, images, {i: truth_from(d, names) for i, d in dets.items()})
    argv = ["--cfg", str(synth_files["cfg"]), "--weights", str(synth_files["weights"]),
            "--classes", str(synth_files["names"]), "--batch-size", "2"]
    got = valid_then_eval(tmp_path, argv, synth_files["names"])
    in_memory = evaluate_detections(load_annotations(tmp_path, "2007", "test"),
                                    results_from_detections(dets, names), names, "voc07")
    assert 0.05 < in_memory.map < 0.95
    assert_same_ap(got, in_memory.to_json())
    # and refuses to overwrite the result files without --force
    assert cli(["valid", *argv, "--voc-root", str(tmp_path), "--out", str(tmp_path / "results")]) == 1


def test_valid_then_eval_on_the_synthetic_test_set(tmp_path, synth_files, synth_net):
    """The issue's round trip on `python -m yolov2 synth`'s devkit (an untrained net: small, nonzero AP)."""
    root = make_synthetic_voc(tmp_path / "synth", 0, 4, seed=0)
    annotations = load_annotations(root, "2007", "test")
    images = [read_image(root / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in annotations]
    dets = dict(zip(annotations, Detector(synth_net, thresh=0.005, relative=False)(images), strict=True))
    in_memory = evaluate_detections(annotations, results_from_detections(dets, SYNTH_CLASSES), SYNTH_CLASSES)
    argv = ["--cfg", str(synth_files["cfg"]), "--weights", str(synth_files["weights"]),
            "--classes", str(root / "classes.names"), "--batch-size", "4"]
    got = valid_then_eval(root, argv, root / "classes.names")
    assert in_memory.map > 0
    assert_same_ap(got, in_memory.to_json())


def test_valid_command_golden_lines(shared, tmp_path):
    """`python -m yolov2 valid` on the golden image writes darknet's comp4 lines (network recomputed)."""
    image = np.load(shared("golden", "prepost", "images", "P2_500x375.npz"))["image"]
    make_voc(tmp_path, {"000001": np.rint(image * 255).astype(np.uint8)}, {"000001": []})
    golden_e2e_net(shared).save_weights(tmp_path / "e2e.weights")
    argv = ["valid", "--cfg", str(shared("golden", "net", "tiny", "model.cfg")), "--weights",
            str(tmp_path / "e2e.weights"), "--voc-root", str(tmp_path), "--out", str(tmp_path / "results")]
    assert run_cli(argv)[0] == 0
    results = tmp_path / "results"
    got = {c: (results / f"comp4_det_test_{c}.txt").read_text().splitlines() for c in VOC_CLASSES}
    written = read_image(tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg")  # what the command read
    det, _, eps = e2e_detections(golden_e2e_net(shared), written)
    [dets] = det([written])
    assert got == dets.comp4_lines("000001", VOC_CLASSES)  # the command writes what Detector computes
    assert_lines_match_darknet(dets, np.load(shared(*E_DIR, "E_tiny_e2e_validate.npz")), "comp4_e2e", eps)


def test_valid_command_missing_image(tmp_path, synth_files, capsys):
    make_voc(tmp_path, {"000001": random_images()[0]}, {"000001": []})
    (tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    assert cli(["valid", "--cfg", str(synth_files["cfg"]), "--weights", str(synth_files["weights"]),
                "--voc-root", str(tmp_path), "--out", str(tmp_path / "r"),
                "--classes", str(synth_files["names"])]) == 1
    assert "000001.jpg: missing image (1 of the 1 images of test.txt are missing)" in capsys.readouterr().err


# --------------------------------------------------------------------------- plots


def test_viz_helpers(synth_net):
    from matplotlib.figure import Figure

    from yolov2.book.viz import class_color, draw_detections, plot_pr_curves

    assert class_color(0, 20) == (1.0, 0.0, 1.0)  # darknet: offset 0 is the ramp's start, magenta
    im = random_images()[1]
    [d] = Detector(synth_net, thresh=0.02)([im])
    ax = Figure().add_subplot()
    artists = draw_detections(ax, im, d, ["circle", "square", "triangle", "star", "cross"])
    assert len(artists) == 1 + 2 * len(d)  # image, then a box and a label per detection
    curves = {"a": type("C", (), {"recall": np.array([0.5, 1.0]), "precision": np.array([1.0, 0.5])})()}
    lines = plot_pr_curves(ax, curves, {"a": 0.75})
    assert len(lines) == 2 and lines[0].get_label() == "a (75.0)"


# --------------------------------------------------------------------------- who suppressed whom


def darknet_nms_record(boxes: np.ndarray, obj: np.ndarray, prob: np.ndarray, nms: float, kind: str):
    """do_nms_sort / do_nms_obj statement by statement, recording for each zeroed (slot, class) the `i`
    whose `for j` loop zeroed it first (the oracle). Returns (prob after, objectness after, by)."""
    dets = [int(i) for i in darknet_swap_loop(obj != 0)][:int((obj != 0).sum())]
    prob, obj = prob.copy(), obj.copy()
    iou = box_iou_matrix(t(boxes), t(boxes)).numpy()
    if kind == "obj":
        by = np.full(len(obj), -1)
        dets = sorted(dets, key=lambda i: -obj[i])
        for a, i in enumerate(dets):
            if obj[i] == 0:
                continue
            for j in dets[a + 1:]:
                if iou[i, j] > np.float32(nms) and obj[j] != 0:
                    obj[j], prob[j], by[j] = 0, 0, i
        return prob, obj, by
    by = np.full(prob.shape, -1)
    for k in range(prob.shape[1]):
        dets = sorted(dets, key=lambda i: -prob[i, k])
        for a, i in enumerate(dets):
            if prob[i, k] == 0:
                continue
            for j in dets[a + 1:]:
                if iou[i, j] > np.float32(nms) and prob[j, k] != 0:
                    prob[j, k], by[j, k] = 0, i
    return prob, obj, by


@pytest.mark.parametrize("kind", ["sort", "obj"])
def test_nms_explain_names_darknets_suppressor_and_keeps_the_survivors(kind):
    """Many boxes (several 64-bit words), ties, zero objectness, two images: with explain the NMS
    gives the same survivors, and `by` is the slot whose loop zeroed each probability in darknet."""
    rng = np.random.default_rng(1)
    n, c = 300, 4
    xy = rng.uniform(0, 1, (2, n, 2))
    boxes = np.concatenate([xy, rng.uniform(0.05, 0.3, (2, n, 2))], -1).astype(np.float32)
    obj = np.where(rng.random((2, n)) < 0.7, np.round(rng.uniform(0.1, 1, (2, n)), 2), 0).astype(np.float32)
    prob = np.round(rng.random((2, n, c)), 1).astype(np.float32) * (obj[..., None] != 0)
    args = (t(boxes), t(obj), t(prob), 0.3)
    if kind == "obj":
        plain = do_nms_obj(*args)
        *explained, by = do_nms_obj(*args, explain=True)
    else:
        plain = do_nms_sort(*args)
        *explained, by = do_nms_sort(*args, explain=True)
    for a, b in zip(plain, explained, strict=True):
        assert torch.equal(a, b)
    post = explained[1] if kind == "obj" else explained[0]
    for b in range(2):
        want_prob, _, want_by = darknet_nms_record(boxes[b], obj[b], prob[b], 0.3, kind)
        np.testing.assert_array_equal(post[b].numpy(), want_prob)
        np.testing.assert_array_equal(by[b].numpy(), want_by)
        assert (want_by >= 0).sum() > 50


def test_nms_explain_on_the_toy_case():
    # A and B overlap (IoU .6); C far away. Class 0: A > B; class 1: B > A.
    boxes = t(np.array([[0.3, 0.5, 0.2, 0.2], [0.32, 0.5, 0.2, 0.2], [0.8, 0.5, 0.1, 0.1]], np.float32))[None]
    obj = t(np.array([0.95, 0.9, 0.6], np.float32))[None]
    prob = t(np.array([[0.9, 0.6], [0.8, 0.7], [0.5, 0.55]], np.float32))[None]
    _, _, by = do_nms_sort(boxes, obj, prob, 0.45, explain=True)
    assert by[0].tolist() == [[-1, 1], [0, -1], [-1, -1]]  # A took B's class 0, B took A's class 1
    *_, by = do_nms_obj(boxes, obj, prob, 0.45, explain=True)
    assert by[0].tolist() == [-1, 0, -1]  # A (objectness .95) wiped B


@pytest.mark.parametrize("nms_kind", ["sort", "obj"])
def test_detector_explain_lists_what_nms_removed(nms_kind):
    """On the demo model and synthetic images: `explain` gives the call's detections, and each
    suppression names a slot that had the class before NMS and lost it to a box at IoU > nms."""
    import tempfile

    net = Darknet(stock_cfg("yolov2-tiny-synth"))
    net.load_weights(Path(__file__).resolve().parents[1] / "data" / "yolov2-tiny-synth.weights")
    root = make_synthetic_voc(Path(tempfile.mkdtemp()) / "synth", 0, 4, seed=0)
    images = [read_image(p) for p in sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))]
    det = Detector(net, thresh=0.1, nms_kind=nms_kind, names=SYNTH_CLASSES)
    plain, explained = det(images), det.explain(images)
    before = Detector(net, thresh=0.1, nms=1.0, nms_kind=nms_kind)(images)  # IoU is never > 1
    assert sum(len(d.suppressed) for d in explained) > 5
    for p, e, b in zip(plain, explained, before, strict=True):
        assert p.suppressed is None  # the same detections (boxes, scores, order)
        for f in ("boxes", "objectness", "probs", "index"):
            np.testing.assert_array_equal(getattr(p, f), getattr(e, f))
        for s in e.suppressed:
            assert s.iou > det.nms and s.by != s.slot
            had = dict(zip(b.index.tolist(), b.probs, strict=True))[s.slot]  # its probabilities before
            assert [float(had[c]) for c in s.classes] == list(s.probs) and all(p > 0 for p in s.probs)
            lost = dict(zip(e.index.tolist(), e.probs, strict=True)).get(s.slot)
            assert lost is None or all(lost[c] == 0 for c in s.classes)
            if nms_kind == "sort":  # the suppressor kept the class, so it is drawn
                assert dict(zip(e.index.tolist(), e.probs, strict=True))[s.by][s.classes[0]] > 0
