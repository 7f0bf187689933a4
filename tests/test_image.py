"""yolov2.data.image against darknet's golden outputs (shared/golden/prepost, README A-D) and OpenCV/torch.

Big golden files are read from ../shared (skipped where absent); tests/fixtures/prepost holds small cuts
of the same darknet outputs (made by make_fixtures.py there) so something is always checked.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, load_npz, shared_path

from yolov2.data import image as I

F32 = np.float32
FIX = FIXTURES / "prepost"
HSV_TOL, DISTORT_TOL, PLACE_TOL = 2e-6, 5e-6, 1e-4


def gold(rel: str) -> dict:
    return load_npz(shared_path("golden", "prepost", rel))


def fixture(name: str) -> dict:
    return load_npz(FIX / name)


def source(case: dict) -> np.ndarray:
    return gold(str(case["source_image"]))["image"]


def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b).max())


# ------------------------------------------------------------------------------------------- loading
def test_load_image_is_darknets_u8_over_255(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])            # cv2 writes BGR
    im = I.load_image(tmp_path / "a.png")
    assert im.dtype == np.float32 and im.shape == (7, 9, 3)
    np.testing.assert_array_equal(im, (rgb / 255.0).astype(F32))  # C: (float)data/255. (double division)
    np.testing.assert_array_equal(I.read_image(tmp_path / "a.png"), rgb)


def _jpeg(tmp_path, progressive: bool = False):
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = tmp_path / "ok.jpg"
    cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    return p


def _bad_file(kind: str, d):
    p = d / f"{kind}.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "junk":
        p.write_bytes(b"not an image at all")
    elif kind.startswith("truncated"):
        p.write_bytes(_jpeg(d, "progressive" in kind).read_bytes()[:-300])
    elif kind == "directory":
        p.mkdir()
    return p


@pytest.mark.parametrize("kind, exc, words", [
    ("missing", FileNotFoundError, "image file not found"),
    ("empty", I.ImageError, "empty image file"),
    ("junk", I.ImageError, "not a decodable image"),
    ("truncated", I.ImageError, "truncated JPEG"),
    ("truncated progressive", I.ImageError, "truncated JPEG"),
    ("directory", I.ImageError, "cannot read"),
])
def test_bad_image_files_name_the_file(tmp_path, kind, exc, words):
    path = _bad_file(kind, tmp_path)
    with pytest.raises(exc, match=words) as e:
        I.load_image(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("progressive", [False, True])
def test_complete_jpeg_loads(tmp_path, progressive):
    assert I.load_image(_jpeg(tmp_path, progressive)).shape == (40, 50, 3)


def test_bad_array_shape():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        I.resize_image(np.zeros((4, 4), F32), 3, 3)
    with pytest.raises(ValueError, match="h >= 2"):
        I.resize_image(np.zeros((4, 4, 3), F32), 3, 1)


# -------------------------------------------------------------------------------------- A: resize
@pytest.mark.parametrize("case", ["A01", "A02", "A03"])
def test_resize_golden(case):
    d = gold(f"A_resize/{case}.npz")
    src = source(d)
    out = I.resize_image(src, int(d["out_w"]), int(d["out_h"]))
    assert maxdiff(out, d["output"]) <= 1e-6
    # a decoder's uint8 image gives the same result (the /255 is folded into the first pass)
    src_u8 = np.round(src * 255).astype(np.uint8)
    assert maxdiff(I.resize_image(src_u8, *out.shape[1::-1]), d["output"]) <= 1e-6


def _a09_items(d: dict, indices) -> list:
    sizes = d["sizes"] if "sizes" in d else json.loads(str(d["sizes_json"]))
    return [(k, *sizes[i]) for i, k in enumerate(indices)]


def test_resize_golden_small_all():
    d = gold("A_resize/A09_small.npz")
    for k, iw, ih, w, h in _a09_items(d, range(len(json.loads(str(d["sizes_json"]))))):
        assert maxdiff(I.resize_image(d[f"input_{k}"], w, h), d[f"output_{k}"]) <= 1e-6, (k, iw, ih, w, h)


def test_resize_fixture_small_cases_with_last_row_bug():
    d = fixture("A09_subset.npz")
    bug = 0
    for k, iw, ih, w, h in _a09_items(d, d["indices"]):
        out = I.resize_image(d[f"input_{k}"], int(w), int(h))
        assert maxdiff(out, d[f"output_{k}"]) <= 1e-6, (k, iw, ih, w, h)
        scale = F32(ih - 1) / F32(h - 1) if h > 1 else F32(0)
        if F32(h - 1) * scale < ih - 1:   # README A: the last row keeps only (1-dy)*part[iy]
            bug += 1
            assert np.abs(out[-1]).max() < np.abs(d[f"input_{k}"][-1]).max()
    assert bug >= 4


@pytest.mark.parametrize("iw, ih, w, h", [(500, 375, 416, 416), (37, 61, 352, 288), (64, 48, 20, 15)])
def test_resize_is_align_corners_bilinear_except_last_row(iw, ih, w, h):
    """Oracle: torch's align_corners=True bilinear agrees to ~1e-6 everywhere but darknet's last row."""
    im = np.random.default_rng(2).random((ih, iw, 3), dtype=F32)
    ref = F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                        align_corners=True)[0].permute(1, 2, 0).numpy()
    assert maxdiff(I.resize_image(im, w, h)[:-1], ref[:-1]) <= 2e-6


def test_crop_resize_equals_crop_then_resize_then_flip():
    im = np.random.default_rng(3).random((61, 37, 3), dtype=F32)
    for dx, dy, cw, ch, flip in [(-5, 7, 45, 50, True), (4, -9, 20, 80, False)]:
        ref = I.resize_image(I.crop_image(im, dx, dy, cw, ch), 30, 22)
        got = I.crop_resize_image(im, dx, dy, cw, ch, 30, 22, flip=flip)
        np.testing.assert_array_equal(got, I.flip_image(ref) if flip else ref)


def test_crop_image_replicates_edges():
    im = np.arange(4 * 5 * 3, dtype=F32).reshape(4, 5, 3)
    c = I.crop_image(im, -2, 1, 9, 5)
    np.testing.assert_array_equal(c[0, 0], im[1, 0])      # left of the image: first column
    np.testing.assert_array_equal(c[4, 8], im[3, 4])      # below and right: last row, last column
    np.testing.assert_array_equal(c[1, 2:7], im[2, 0:5])


# ----------------------------------------------------------------------------------- B: letterbox
@pytest.mark.parametrize("case", ["B01", "B02", "B03", "B04"])
def test_letterbox_golden(case):
    d = gold(f"B_letterbox/{case}.npz")
    src = source(d)
    geo = I.letterbox_geometry(src.shape[1], src.shape[0], int(d["out_w"]), int(d["out_h"]))
    assert geo == tuple(int(d[k]) for k in ("new_w", "new_h", "dx", "dy"))
    assert maxdiff(I.letterbox_image(src, int(d["out_w"]), int(d["out_h"])), d["output"]) <= 1e-6


def test_letterbox_fixture_rows():
    d = fixture("B03_rows.npz")
    w, h = int(d["out_w"]), int(d["out_h"])
    assert I.letterbox_geometry(37, 61, w, h) == tuple(int(d[k]) for k in ("new_w", "new_h", "dx", "dy"))
    assert maxdiff(I.letterbox_image(d["source"], w, h)[d["out_rows"]], d["golden_rows"]) <= 1e-6


# ----------------------------------------------------------------------------------------- C: HSV
def _hsv_cases():
    yield "fixture C01", fixture("C01.npz")
    for c in ("C01", "C02"):
        yield c, None


@pytest.mark.parametrize("name, case", list(_hsv_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_hsv_golden(name, case):
    d = case if case is not None else gold(f"C_hsv/{name}.npz")
    x = d["input"]
    hsv = I.rgb_to_hsv(x)
    np.testing.assert_array_equal(np.isnan(hsv), np.isnan(d["hsv"]))     # grey pixels: h = 0/0
    assert np.nanmax(np.abs(hsv - d["hsv"])) <= HSV_TOL
    assert maxdiff(I.hsv_to_rgb(hsv), d["roundtrip_rgb"]) <= HSV_TOL
    assert maxdiff(I.hsv_to_rgb(d["crafted_hsv"]), d["crafted_hsv_to_rgb"]) <= 1e-6
    for k, (hue, sat, val) in enumerate(d["distort_params"]):
        out = I.distort_image(x, hue, sat, val)
        assert not np.isnan(out).any()
        diff = np.abs(out - d[f"distort_{k}"]).max(-1)
        assert diff[~d[f"distort_fragile_{k}"]].max() <= DISTORT_TOL, k


def test_hsv_quirks():
    """h == 1.0 gives (v, p, v) (index 6 falls to the default); grey has NaN hue; s > 1 is not clamped."""
    x = np.array([[[1, .3, .3000001], [.4, .4, .4], [0, 0, 0]]], F32)
    hsv = I.rgb_to_hsv(x)
    assert hsv[0, 0, 0] == 1.0 and np.isnan(hsv[0, 1, 0]) and hsv[0, 2].tolist() == [0, 0, 0]
    np.testing.assert_allclose(I.hsv_to_rgb(hsv)[0, 0], [1, .3, 1], atol=1e-6)
    assert I.hsv_to_rgb(np.array([[[0, 1.5, 1]]], F32))[0, 0].tolist() == pytest.approx([1, -.5, -.5])


def test_distort_clamps_and_shifts_hue():
    x = np.array([[[1, 0, 0], [.5, .5, .5], [0, 0, 0]]], F32)
    out = I.distort_image(x, 1 / 3, 1, 2)         # red -> green; grey*2 -> 1 (clamped)
    np.testing.assert_allclose(out[0], [[0, 1, 0], [1, 1, 1], [0, 0, 0]], atol=2e-6)
    np.testing.assert_allclose(I.distort_image(x, -1 / 3, 1, 1)[0, 0], [0, 0, 1], atol=2e-6)


# ---------------------------------------------------------------------- D: place_image, flip_image
def _place_case(d: dict, src: np.ndarray) -> np.ndarray:
    w, h = int(d["canvas_w"]), int(d["canvas_h"])
    pi = [int(v) for v in d["place_ints"]]
    assert pi == [int(d["nw"]), int(d["nh"]), int(d["dx"]), int(d["dy"])]    # C truncation toward zero
    out = I.place_image(src, *pi, np.full((h, w, 3), 0.5, F32))
    return I.flip_image(out) if int(d["flip"]) else out


@pytest.mark.parametrize("case", ["D01", "D02", "D03", "D04", "D05"])
def test_place_image_golden(case):
    d = gold(f"D_augment/{case}.npz")
    src = source(d)
    assert maxdiff(_place_case(d, src), d["image_geom"]) <= PLACE_TOL
    # the loader's path: uint8 source, flip folded into the placement
    vals, where = I.place_region(np.round(src * 255).astype(np.uint8), *[int(v) for v in d["place_ints"]],
                                 int(d["canvas_w"]), int(d["canvas_h"]), bool(d["flip"]))
    assert maxdiff(vals, d["image_geom"][where]) <= PLACE_TOL


def test_place_image_fixture_rows():
    d = fixture("D04_rows.npz")
    assert maxdiff(_place_case(d, d["source"])[d["out_rows"]], d["golden_rows"]) <= PLACE_TOL


def test_place_image_upsampling_blends_to_black_and_drops_outside_writes():
    im = np.ones((2, 2, 3), F32)
    canvas = I.place_image(im, 4, 4, 3, -1, np.full((5, 6, 3), 0.5, F32))
    # ry = y/4*2: row y=3 samples at 1.5, half of it past the edge (get_pixel_extend = 0); y=0 and x=3
    # fall outside the canvas and are dropped
    np.testing.assert_allclose(canvas[0:3, 3:6, 0], [[1, 1, 1], [1, 1, 1], [.5, .5, .5]], atol=1e-6)
    assert canvas[3, 3, 0] == 0.5 and canvas[0, 2, 0] == 0.5                       # untouched
    np.testing.assert_allclose(I.place_image(im, 4, 4, 0, 0, np.zeros((4, 4, 3), F32))[3, 3], .25, atol=1e-6)


def test_flip_image():
    im = np.arange(2 * 3 * 3, dtype=F32).reshape(2, 3, 3)
    np.testing.assert_array_equal(I.flip_image(im)[:, 0], im[:, 2])
