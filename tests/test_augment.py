"""yolov2.data.augment against darknet's golden loaders (shared/golden/prepost README D) and by drawing.

F cases run darknet's full loaders with a scripted rand(); D and R are their building blocks; T01 holds
the label-list quirks.  tests/fixtures/prepost has small cuts of these (see make_fixtures.py there).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import FIXTURES, load_npz, shared_path

from yolov2.data import augment as A
from yolov2.data.image import (
    F32,
    Scratch,
    crop_resize_image,
    distort_image,
    flip_image,
    place_image,
    to_float,
)

FIX = FIXTURES / "prepost"
TRUTH_TOL, PLACE_TOL, REGION_X_TOL = 1e-6, 1e-4, 5e-6


def gold(rel: str) -> dict:
    return load_npz(shared_path("golden", "prepost", rel))


def fixture(name: str) -> dict:
    return load_npz(FIX / name)


def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b).max())


def f_case(case: str) -> tuple[dict, dict, dict]:
    """(arrays, derived numbers, call info) of a full-loader case, from the small script fixture."""
    d = fixture("F_scripts.npz")
    arr = {k: d[f"{case}_{k}"] for k in ("labels", "truth", "rand_script")}
    return arr, json.loads(str(d[f"{case}_derived_json"])), json.loads(str(d[f"{case}_info_json"]))


def params_for(case: str):
    arr, _, info = f_case(case)
    c, (ow, oh) = info["call"], info["source_wh"]
    hsv, n = (c["hue"], c["saturation"], c["exposure"]), len(arr["labels"])
    script = arr["rand_script"][1:]          # rand_script[0] is get_random_paths' rand() % m
    if info["loader"] == "load_data_detection":
        return A.DetectionParams.from_rand(script, ow, oh, c["w"], c["h"], c["jitter"], *hsv, n)
    return A.RegionParams.from_rand(script, ow, oh, c["jitter"], *hsv, n)


# ------------------------------------------------------------------------------ random numbers
def test_rand_uniform_and_scale():
    assert A.rand_uniform(0, -3, 5) == -3 and A.rand_uniform(A.RAND_MAX, -3, 5) == 5   # RAND_MAX -> 2**31f
    assert A.rand_uniform(2 ** 30, 5, -3) == 1.0                                          # bounds swap
    assert A.rand_scale(2 ** 30, 1, 1.5) == 1.25 and A.rand_scale(2 ** 30, 0, 1.5) == float(F32(1 / 1.25))


def test_rand_script_exhausted():
    with pytest.raises(ValueError, match="exhausted"):
        A.DetectionParams.from_rand([1, 2, 3], 500, 375, 416, 416, .2, .1, 1.5, 1.5, 0)


@pytest.mark.parametrize("case", ["F01", "F02", "F03", "F04"])
def test_params_replay_darknet_script(case):
    arr, dv, info = f_case(case)
    p = params_for(case)
    assert list(p.perm) == info["order"]
    assert p.flip == bool(dv["flip"])
    assert (p.dhue, p.dsat, p.dexp) == pytest.approx((dv["dhue"], dv["dsat"], dv["dexp"]), abs=1e-7)
    if isinstance(p, A.DetectionParams):
        assert (p.jitter_w, p.jitter_h) == (dv["rand_uniform_w"], dv["rand_uniform_h"])   # width drawn first
        assert (p.new_ar, p.nw, p.nh, p.dx, p.dy) == tuple(dv[k] for k in ("new_ar", "nw", "nh", "dx", "dy"))
        assert list(p.place_ints) == dv["place_image_ints"]
        assert list(p.truth_args(info["call"]["w"], info["call"]["h"])) == dv["fill_truth_detection_args"]
    else:
        pads = ("pleft", "pright", "ptop", "pbot")
        assert (p.pleft, p.pright, p.ptop, p.pbot) == tuple(dv[k] for k in pads)
        sw, sh, sx, sy, dx, dy = p.geometry(*info["source_wh"])
        assert (sw, sh) == (dv["swidth"], dv["sheight"])
        assert (sx, sy, dx, dy) == pytest.approx(tuple(dv[k] for k in ("sx", "sy", "dx", "dy")), abs=1e-8)


def test_random_distort_scripts():
    """random_distort_image's 5 draws (C cases): dhue, dsat, dexp as darknet derived them."""
    m = json.loads(shared_path("golden", "prepost", "manifest.json").read_text())
    for case in m["C_hsv"]:
        for r in case["random_distort"]:
            got = A.RandStream(r["rand_script"]).distortion(r["hue"], r["saturation"], r["exposure"])
            want = r["derived"]
            assert got == pytest.approx((want["dhue"], want["dsat"], want["dexp"]), abs=1e-7)


# ----------------------------------------------------------------------------------------- truth
@pytest.mark.parametrize("case", ["D01", "D02", "D03", "D04", "D05", "fixture D04"])
def test_correct_boxes_and_truth_detection(case):
    d = fixture("D04_rows.npz") if case.startswith("fixture") else gold(f"D_augment/{case}.npz")
    dx, dy, sx, sy = d["truth_params"]
    flip = bool(d["flip"])
    assert maxdiff(A.correct_boxes(d["labels"], dx, dy, sx, sy, flip), d["corrected_boxes"]) <= TRUTH_TOL
    t = A.fill_truth_detection(d["labels"], range(len(d["labels"])), dx, dy, sx, sy, flip)
    assert t.shape == (30, 5) and maxdiff(t, d["truth"]) <= TRUTH_TOL
    np.testing.assert_array_equal(t[:, 4], d["truth"][:, 4])        # the kept set and ids, exactly


def test_truth_quirks_t01():
    d = fixture("T01_truth.npz")
    p, flip, n = d["det_params"], bool(d["det_flip"]), int(d["det_num_boxes"])
    assert maxdiff(A.correct_boxes(d["det_labels"], *p, flip), d["det_corrected_boxes"]) <= TRUTH_TOL
    t = A.fill_truth_detection(d["det_labels"], range(len(d["det_labels"])), *p, flip, n)
    assert t[0].tolist() == [999999] * 4 + [d["det_truth"][0, 4]]              # the x == y == 0 row is kept
    assert maxdiff(t, d["det_truth"]) <= TRUTH_TOL
    r = A.fill_truth_region(d["region_labels"], range(len(d["region_labels"])), 0, 0, 1, 1,
                            bool(d["region_flip"]), int(d["region_side"]), int(d["region_classes"]))
    assert maxdiff(r, d["region_truth"]) <= TRUTH_TOL


def test_truth_drop_compares_in_double_and_caps_first():
    # w = f32(.001) is just above the double .001 and is kept; the next float below is dropped
    # (x = w/2 puts the left edge at 0, so the corrected width is w exactly)
    ws = [F32(.001), np.nextafter(F32(.001), F32(0))]
    lab = np.array([[1, ws[0] / 2, .5, ws[0], .2], [2, ws[1] / 2, .5, ws[1], .2], [3, .3, .3, .2, .2]], F32)
    assert A.correct_boxes(lab, 0, 0, 1, 1, False)[:2, 3].tolist() == [float(v) for v in ws]
    t = A.fill_truth_detection(lab, range(3), 0, 0, 1, 1, False, max_boxes=30)
    assert t[:3, 4].tolist() == [1, 3, 0]
    t = A.fill_truth_detection(lab, (1, 2, 0), 0, 0, 1, 1, False, max_boxes=1)   # cap, then drop: nothing
    assert not t.any()


def test_bad_labels():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        A.correct_boxes(np.zeros((3, 4), F32), 0, 0, 1, 1, False)
    assert A.fill_truth_detection(np.zeros((0,)), [], 0, 0, 1, 1, False).shape == (30, 5)


# ---------------------------------------------------------------- building blocks: R (crop-jitter)
def _region_case(d: dict, src: np.ndarray):
    pl, pr, pt, pb = (int(v) for v in d["pleft_pright_ptop_pbot"])
    p = A.RegionParams(pl, pr, pt, pb, bool(d["flip"]), 0.0, 1.0, 1.0, tuple(range(len(d["labels"]))))
    sw, sh, sx, sy, dx, dy = p.geometry(src.shape[1], src.shape[0])
    assert [sw, sh] == d["swidth_sheight"].tolist()
    assert (sx, sy, dx, dy) == pytest.approx([*d["sx_sy"], *d["dx_dy"]], abs=1e-8)
    img = crop_resize_image(src, pl, pt, sw, sh, int(d["out_w"]), int(d["out_h"]), p.flip)
    truth = A.fill_truth_region(d["labels"], p.perm, dx, dy, float(F32(1 / sx)), float(F32(1 / sy)), p.flip,
                                int(d["side"]), int(d["classes"]))
    return img, truth


def _rows_source(d: dict) -> np.ndarray:
    """A fixture's source: the stored rows (exact u8/255), zeros elsewhere (the kept rows don't read them)."""
    src = np.zeros(tuple(d["source_shape"]), F32)
    src[d["source_rows"]] = to_float(d["source_u8"])
    return src


@pytest.mark.parametrize("case", ["R01", "R02", "fixture R01"])
def test_region_building_blocks(case):
    if case.startswith("fixture"):
        d = fixture("R01_rows.npz")
        img, truth = _region_case(d, _rows_source(d))
        img, want = img[d["out_rows"]], d["golden_rows"]
    else:
        d = gold(f"D_augment/{case}.npz")
        img, truth = _region_case(d, gold(str(d["source_image"]))["image"])
        want = d["image_geom"]
    assert maxdiff(img, want) <= 1e-6
    assert maxdiff(truth, d["truth"]) <= TRUTH_TOL
    np.testing.assert_array_equal(truth[:, 0], d["truth"][:, 0])


# ------------------------------------------------------------------------------- full loaders: F
@pytest.mark.parametrize("case", ["F01", "F02", "F03", "F04"])
def test_full_loader_truth(case):
    arr, dv, info = f_case(case)
    p, c = params_for(case), info["call"]
    if isinstance(p, A.DetectionParams):
        t = A.fill_truth_detection(arr["labels"], p.perm, *p.truth_args(c["w"], c["h"]), p.flip, c["boxes"])
        assert maxdiff(t, arr["truth"]) <= TRUTH_TOL
        return
    sw, sh, sx, sy, dx, dy = p.geometry(*info["source_wh"])
    inv = (float(F32(1 / sx)), float(F32(1 / sy)))
    grid = A.fill_truth_region(arr["labels"], p.perm, dx, dy, *inv, p.flip, c["boxes"], c["classes"])
    assert maxdiff(grid, arr["truth"]) <= TRUTH_TOL
    # the list truth augment_region emits holds the same boxes: rebuild the grid from it (first box wins)
    listed = A.fill_truth_detection(arr["labels"], p.perm, dx, dy, *inv, p.flip, 30, .005)
    rows = listed[listed[:, 2] > 0][:, [4, 0, 1, 2, 3]]
    assert maxdiff(A.fill_truth_region(rows, range(len(rows)), 0, 0, 1, 1, False, c["boxes"], c["classes"]),
                   arr["truth"]) <= TRUTH_TOL


@pytest.mark.parametrize("case", ["F01", "F02", "F03", "F04"])
def test_full_loader_image(case):
    d = gold(f"D_augment/{case}.npz")
    src = gold(str(d["source_image"]))["image"]
    h, w = d["X"].shape[:2]
    p = params_for(case)
    if isinstance(p, A.DetectionParams):
        x, t = A.augment_detection(src, d["labels"], p, w, h)
        assert maxdiff(x, d["X"]) <= PLACE_TOL and maxdiff(t, d["truth"]) <= TRUTH_TOL
        src_u8 = np.round(src * 255).astype(np.uint8)
        x8, _ = A.augment_detection(src_u8, d["labels"], p, w, h, scratch=Scratch())
        assert maxdiff(x8, d["X"]) <= PLACE_TOL
    else:
        x, t = A.augment_region(src, d["labels"], p, w, h)
        assert maxdiff(x, d["X"]) <= REGION_X_TOL
        assert t.shape == (30, 5) and (t[:, 2] > 0).sum() == (d["truth"][:, 0] > 0).sum()


def test_full_loader_image_fixture_rows():
    d = fixture("F01_rows.npz")
    c = json.loads(str(d["call_json"]))
    p = A.DetectionParams.from_rand(d["rand_script"][1:], *d["source_shape"][1::-1], c["w"], c["h"],
                                    c["jitter"], c["hue"], c["saturation"], c["exposure"], len(d["labels"]))
    x, t = A.augment_detection(_rows_source(d), d["labels"], p, c["w"], c["h"])
    assert maxdiff(x[d["out_rows"]], d["golden_rows"]) <= PLACE_TOL
    assert maxdiff(t, d["truth"]) <= TRUTH_TOL


def test_detection_is_place_distort_flip():
    """augment_detection folds the flip and the border distortion in; it equals darknet's literal order."""
    rng = np.random.default_rng(5)
    src = rng.random((50, 70, 3), dtype=F32)
    p = A.DetectionParams(1.2, 96.0, 80.0, -5.5, 3.2, .07, 1.3, .8, True, ())
    x, _ = A.augment_detection(src, np.zeros((0, 5)), p, 90, 84)
    ref = distort_image(place_image(src, 96, 80, -5, 3, np.full((84, 90, 3), .5, F32)), .07, 1.3, .8)
    assert maxdiff(x, flip_image(ref)) <= 1e-6


# ---------------------------------------------------------------------------- Augmenter, drawing
def test_augmenter_seeded_picklable_and_dtype_agnostic():
    im = (np.random.default_rng(6).random((60, 80, 3)) * 255).astype(np.uint8)
    lab = np.array([[3, .5, .5, .4, .3]], F32)
    for kind in ("detection", "region"):
        aug = A.Augmenter(kind, .2, .1, 1.5, 1.5)
        a = aug(im, lab, 64, 48, np.random.default_rng(1))
        b = pickle.loads(pickle.dumps(aug))(im, lab, 64, 48, np.random.default_rng(1))
        c = aug(to_float(im), lab, 64, 48, np.random.default_rng(1))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert maxdiff(a[0], c[0]) <= 1e-5 and a[0].shape == (48, 64, 3) and a[1].shape == (30, 5)
    with pytest.raises(ValueError, match="kind"):
        A.Augmenter("yolo", .2, .1, 1.5, 1.5)


def _scene(rng, ow: int, oh: int, n: int = 2):
    """Black image with n white rectangles (not touching each other or the border) and their labels."""
    im = np.zeros((oh, ow, 3), F32)
    labels, cols = [], np.linspace(4, ow - 4, n + 1).astype(int)
    for k in range(n):
        x0 = rng.integers(cols[k], cols[k + 1] - 12)
        x1 = rng.integers(x0 + 8, cols[k + 1] - 3)
        y0 = rng.integers(4, oh - 20)
        y1 = rng.integers(y0 + 8, oh - 4)
        im[y0:y1, x0:x1] = 1
        labels.append([k, (x0 + x1) / 2 / ow, (y0 + y1) / 2 / oh, (x1 - x0) / ow, (y1 - y0) / oh])
    return im, np.array(labels, F32)


def _check_boxes_on_objects(canvas: np.ndarray, truth: np.ndarray, bright: float, slack: float = 1.5):
    """Every bright pixel lies in a truth box (+slack px); each box's inside (-2.5 px) is bright."""
    h, w = canvas.shape[:2]
    mask = canvas[..., 0] > bright
    ys, xs = np.nonzero(mask)
    inside = np.zeros(len(xs), bool)
    for x, y, bw, bh, _ in truth[truth[:, 2] > 0]:
        x0, x1, y0, y1 = (x - bw / 2) * w, (x + bw / 2) * w, (y - bh / 2) * h, (y + bh / 2) * h
        cx, cy = xs + .5, ys + .5   # pixel centres
        inside |= (cx >= x0 - slack) & (cx <= x1 + slack) & (cy >= y0 - slack) & (cy <= y1 + slack)
        core = mask[int(np.ceil(y0 + 2.5)):int(y1 - 2.5), int(np.ceil(x0 + 2.5)):int(x1 - 2.5)]
        assert core.all(), "a truth box is not on its object"
    assert inside.all(), f"{(~inside).sum()} object pixels outside every truth box"


@pytest.mark.parametrize("kind", ["detection", "region"])
@pytest.mark.parametrize("w, h", [(160, 160), (224, 160), (160, 224)])
def test_boxes_stay_on_their_objects(kind, w, h):
    aug = A.Augmenter(kind, .3, .1, 1.5, 1.5)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        im, lab = _scene(rng, int(rng.integers(90, 200)), int(rng.integers(90, 200)))
        p = aug.sample(rng, im.shape[1], im.shape[0], w, h, len(lab))
        run = A.augment_detection if kind == "detection" else A.augment_region
        canvas, truth = run(im, lab, p, w, h)
        # white has s = 0: it becomes min(1, dexp); the grey border 0.5*dexp stays below .9 of that
        _check_boxes_on_objects(canvas, truth, .9 * min(1.0, p.dexp))
        assert set(truth[truth[:, 2] > 0, 4].astype(int)) <= {0, 1}


@pytest.mark.parametrize("letterbox", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_eval_transform_keeps_boxes_on_objects(letterbox, dtype):
    rng = np.random.default_rng(9)
    im, lab = _scene(rng, 150, 100, 3)
    im = (im * (255 if dtype == np.uint8 else 1)).astype(dtype)
    canvas, truth = A.EvalTransform(letterbox)(im, lab, 128, 96)
    assert canvas.dtype == np.float32 and abs(canvas.max() - 1) < 1e-6
    assert canvas.shape == (96, 128, 3) and (truth[:, 2] > 0).sum() == 3
    _check_boxes_on_objects(canvas, truth, .9)
