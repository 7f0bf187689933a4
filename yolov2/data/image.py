"""Darknet's image operations on (H, W, 3) RGB arrays, exact to darknet's float32 arithmetic.

Reference: darknet `src/image.c` (load_image_color, resize_image, letterbox_image, embed_image,
place_image, crop_image, flip_image, rgb_to_hsv, hsv_to_rgb, distort_image, constrain_image).
Semantics and tolerances: `shared/golden/prepost/README.md`, sections A, B, C and D.

An image is (H, W, 3) float32 RGB in [0, 1], darknet's planar `image.data` as HWC. The sampling
functions also take the (H, W, 3) uint8 image a decoder returns and read it as darknet does,
`(float)u8 / 255.`.

Decoding is defensive (`read_image`): an image above the pixel cap (`MAX_PIXELS`, 8192 x 8192, or
`$YOLOV2_MAX_PIXELS`) is refused from its header before anything is decoded (JPEG, PNG, BMP, GIF, WebP,
TIFF, PNM; other formats after decoding), a JPEG cut short is refused even when an end marker was
appended, and every OpenCV error becomes an ImageError naming the file.

Speed matters: the training loader runs these per image, so the tested functions are the fast ones.
resize_image is separable (its weights along x depend only on x, along y only on y): two passes of
"gather two columns (rows), weight, add" in darknet's float32 order, bit-exact.  place_image is one
fused torch grid_sample (within 2e-5 of darknet, tolerance 1e-4).  distort_image goes through OpenCV's
float HSV conversions.  Large temporaries live in a `Scratch` the loader keeps between images, since
fresh large arrays cost page faults.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

F32 = np.float32
_INV255 = F32(1.0 / 255.0)
_DECODE = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # stb (darknet) ignores EXIF rotation too
MAX_PIXELS = 8192 * 8192  # the default decode limit (67,108,864 pixels); a VOC image has ~190,000


class ImageError(ValueError):
    """An image file that exists but cannot be used (empty, truncated, not decodable)."""


class Scratch:
    """Work buffers reused between calls (one per loader worker; not thread-safe).

    A function given a Scratch may return a view into it, valid until the next call that uses it.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype=F32) -> np.ndarray:
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = self._bufs[key] = np.empty(max(n, 1), dtype)
        return buf[:n].reshape(shape)


def _buf(scratch: Scratch | None, key: str, shape: tuple[int, ...], dtype=F32) -> np.ndarray:
    return np.empty(shape, dtype) if scratch is None else scratch.get(key, shape, dtype)


# ------------------------------------------------------------------------------------------ loading
def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose last scan (SOS, FFDA) is followed by the end-of-image marker (FFD9)."""
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


# bytes a JPEG decoder reads as entropy-coded data (no 0xFF: that would start a marker)
_PROBE = bytes(b for b in range(1, 255)) * 2


def _jpeg_cut_short(data: bytes, bgr: np.ndarray) -> bool:
    """A JPEG whose scan data ends before its last block, with an end marker after it.

    libjpeg (through OpenCV) only warns: it decodes the missing blocks as zeros, mid-grey (128) down to
    the last pixel. Such an image is decoded again with bytes inserted before the end marker: a cut scan
    reads them as its missing data and changes, a complete one ignores them (only then is it decoded
    twice: its last pixel must be exactly grey).
    """
    if not (bgr[-1, -1] == 128).all():
        return False
    end = data.rfind(b"\xff\xd9")
    again = cv2.imdecode(np.frombuffer(data[:end] + _PROBE + data[end:], np.uint8), _DECODE)
    return again is None or not np.array_equal(again, bgr)


def _u16(b: bytes, order: str = "big") -> int:
    return int.from_bytes(b[:2], order)


def _u32(b: bytes, order: str = "big") -> int:
    return int.from_bytes(b[:4], order)


def _jpeg_size(d: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(d) and d[i] == 0xFF:
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            return _u16(d[i + 7:]), _u16(d[i + 5:])
        elif marker == 0xDA:  # a scan before any frame header
            return None
        else:
            i += 2 + _u16(d[i + 2:])
    return None


def _tiff_size(d: bytes) -> tuple[int, int] | None:
    order = "little" if d[:2] == b"II" else "big"
    ifd = _u32(d[4:], order)
    if ifd + 2 > len(d):
        return None
    found = {}
    for k in range(_u16(d[ifd:], order)):
        e = d[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(e) < 12:
            break
        tag, kind = _u16(e, order), _u16(e[2:], order)
        if tag in (256, 257) and kind in (3, 4):
            found[tag] = _u16(e[8:], order) if kind == 3 else _u32(e[8:], order)
    return (found[256], found[257]) if len(found) == 2 else None


def _pnm_size(d: bytes) -> tuple[int, int] | None:
    words = []
    for line in d[2:512].split(b"\n"):
        words += line.split(b"#")[0].split()
        if len(words) >= 2:
            break
    return (int(words[0]), int(words[1])) if len(words) >= 2 and all(w.isdigit() for w in words[:2]) else None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding it; None for an unknown format.

    JPEG (the first frame header), PNG (IHDR), BMP, GIF, WebP (VP8, VP8L, VP8X), TIFF (the first IFD),
    PNM (P1-P6).
    """
    d = data
    if d[:2] == b"\xff\xd8":
        return _jpeg_size(d)
    if d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR" and len(d) >= 24:
        return _u32(d[16:]), _u32(d[20:])
    if d[:2] == b"BM" and len(d) >= 26:
        if _u32(d[14:], "little") == 12:  # BITMAPCOREHEADER
            return _u16(d[18:], "little"), _u16(d[20:], "little")
        return (abs(int.from_bytes(d[18:22], "little", signed=True)),
                abs(int.from_bytes(d[22:26], "little", signed=True)))
    if d[:6] in (b"GIF87a", b"GIF89a") and len(d) >= 10:
        return _u16(d[6:], "little"), _u16(d[8:], "little")
    if d[:4] == b"RIFF" and d[8:12] == b"WEBP" and len(d) >= 30:
        chunk = d[12:16]
        if chunk == b"VP8 ":
            return _u16(d[26:], "little") & 0x3FFF, _u16(d[28:], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = _u32(d[21:], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return 1 + int.from_bytes(d[24:27], "little"), 1 + int.from_bytes(d[27:30], "little")
        return None
    if d[:4] in (b"II*\x00", b"MM\x00*") and len(d) >= 8:
        return _tiff_size(d)
    if len(d) > 3 and d[:1] == b"P" and d[1:2] in b"123456" and d[2:3].isspace():
        return _pnm_size(d)
    return None


def pixel_limit() -> int:
    """The decode limit in pixels: `$YOLOV2_MAX_PIXELS` when set, else :data:`MAX_PIXELS`."""
    raw = os.environ.get("YOLOV2_MAX_PIXELS", "").strip()
    if not raw:
        return MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ImageError(f"YOLOV2_MAX_PIXELS={raw!r}: expected a positive whole number of pixels")
    return int(raw)


def _check_pixels(p: Path, w: int, h: int, cap: int, when: str) -> None:
    if w * h > cap:
        raise ImageError(f"{p}: {w}x{h} image ({w * h:,} pixels) is above the limit of {cap:,} pixels "
                         f"(set YOLOV2_MAX_PIXELS to allow it); {when}")


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; errors name the file and the problem.

    max_pixels: refuse larger images (default :func:`pixel_limit`), from the header where the format's
    is known (nothing is decoded then), else after decoding.
    """
    p = Path(path)
    cap = pixel_limit() if max_pixels is None else max_pixels
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: image file not found") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read image file ({e.strerror or e})") from None
    if not data:
        raise ImageError(f"{p}: empty image file")
    size = header_size(data)
    if size is not None:
        _check_pixels(p, *size, cap, "not decoded")
    jpeg = data[:2] == b"\xff\xd8"
    if jpeg and not _jpeg_complete(data):
        raise ImageError(f"{p}: truncated JPEG (no end-of-image marker after the last scan)")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE)
        if bgr is None:
            raise ImageError(f"{p}: not a decodable image (OpenCV could not read it)")
        _check_pixels(p, bgr.shape[1], bgr.shape[0], cap, "decoded, then refused")
        if jpeg and _jpeg_cut_short(data, bgr):
            raise ImageError(f"{p}: truncated JPEG (its image data ends before the last block; an end "
                             f"marker was appended)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    except cv2.error as e:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS), corrupt data, ...
        msg = next((ln.split("error: ", 1)[-1] for ln in str(e).splitlines() if ln.strip()), str(e))
        raise ImageError(f"{p}: OpenCV cannot decode it ({msg.strip()})") from None


def to_float(im: np.ndarray) -> np.ndarray:
    """uint8 -> float32 exactly as darknet's `(float)data/255.` (f32 division is correctly rounded)."""
    return np.divide(im, F32(255), dtype=F32)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """darknet's load_image_color: (H, W, 3) float32 RGB in [0, 1]."""
    return to_float(read_image(path))


def check_image(im: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 or float32 image as a C-contiguous array, or a ValueError saying what it is."""
    if im.ndim != 3 or im.shape[2] != 3 or im.dtype not in (np.uint8, np.float32):
        raise ValueError(f"expected an (H, W, 3) uint8 or float32 image, got {im.shape} {im.dtype}")
    return np.ascontiguousarray(im)


# ------------------------------------------------------------------------------- separable sampling
# Taps for one axis: output i = w0[i] * src[i0[i]] + w1[i] * src[i1[i]] (products rounded to f32, then
# summed, as darknet's C does).  A tap darknet does not take has weight 0.
Taps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _resize_taps(n_in: int, n_out: int, is_rows: bool, offset: int = 0, n_src: int | None = None) -> Taps:
    """resize_image's align-corners taps; `offset`/`n_src` compose crop_image's clamped window."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = F32(n_in - 1) / F32(n_out - 1)      # (float)(im.w-1) / (w-1)
        s = np.arange(n_out, dtype=F32) * scale      # sx = c*w_scale
    s[~np.isfinite(s)] = 0                           # w == 1: the only column is the copied last one
    i0 = s.astype(np.intp)                           # (int)sx
    d = s - i0.astype(F32)
    w0, w1 = F32(1) - d, d
    if is_rows:
        # last-row bug: the last output row keeps only (1-dy)*part[iy], even when dy ~ 1
        w1[n_out - 1] = 0
    else:
        # the last column is copied from the source's last column
        i0[n_out - 1], w0[n_out - 1], w1[n_out - 1] = n_in - 1, 1, 0
    if n_in == 1:
        w1[:] = 0
    n_src = n_in if n_src is None else n_src
    # crop_image replicates the edge pixel outside the source
    return np.clip(i0 + offset, 0, n_src - 1), np.clip(i0 + 1 + offset, 0, n_src - 1), w0, w1


def _pass(src: np.ndarray, taps: Taps, axis: int, scale: np.float32, tag: str,
          scratch: Scratch | None) -> np.ndarray:
    """One separable pass on a (R, X*3) view: gather rows (axis 0) or pixel columns (axis 1), weight, add."""
    i0, i1, w0, w1 = taps
    if axis == 1:   # columns of an interleaved RGB row: expand pixel indices to channel indices
        i0, i1 = [(i[:, None] * 3 + np.arange(3)).ravel() for i in (i0, i1)]
        w0, w1 = np.repeat(w0, 3), np.repeat(w1, 3)
    else:
        w0, w1 = w0[:, None], w1[:, None]
    if scale != 1:  # uint8 input: fold darknet's /255 into the weights
        w0, w1 = w0 * scale, w1 * scale
    shape = (len(w0), src.shape[1]) if axis == 0 else (src.shape[0], len(w0))
    g = _buf(scratch, tag + "g", shape, src.dtype)
    out = _buf(scratch, tag + "o", shape)
    tmp = _buf(scratch, tag + "t", shape)
    np.multiply(np.take(src, i0, axis=axis, out=g, mode="clip"), w0, out=out)
    np.multiply(np.take(src, i1, axis=axis, out=g, mode="clip"), w1, out=tmp)
    return np.add(out, tmp, out=out)


def _sample(im: np.ndarray, rows: Taps, cols: Taps, scratch: Scratch | None = None) -> np.ndarray:
    """Column taps (pass 1, as darknet), then row taps on an (H, W, 3) image -> (rows, cols, 3) float32."""
    im = check_image(im)
    scale = _INV255 if im.dtype == np.uint8 else F32(1)
    x = _pass(im.reshape(im.shape[0], -1), cols, 1, scale, "a", scratch)   # (H, w*3)
    x = _pass(x, rows, 0, F32(1), "b", scratch)                               # (h, w*3)
    return x.reshape(len(rows[0]), len(cols[0]), 3)


# --------------------------------------------------------------------------------- geometry ops
def resize_image(im: np.ndarray, w: int, h: int, scratch: Scratch | None = None) -> np.ndarray:
    """darknet resize_image: align-corners bilinear, columns then rows, with the last-row bug -> (h, w, 3)."""
    return crop_resize_image(im, 0, 0, im.shape[1], im.shape[0], w, h, scratch=scratch)


def crop_resize_image(im: np.ndarray, dx: int, dy: int, cw: int, ch: int, w: int, h: int,
                      flip: bool = False, scratch: Scratch | None = None) -> np.ndarray:
    """resize_image(crop_image(im, dx, dy, cw, ch), w, h), then flip_image if `flip` -> (h, w, 3).

    The crop is only an index map (edges replicated), so composing it into the taps is exact.
    """
    if h < 2 or w < 1 or cw < 1 or ch < 1:
        raise ValueError(f"resize_image needs h >= 2 and positive sizes (darknet divides by h-1), "
                         f"got crop {cw}x{ch} -> {w}x{h}")
    rows = _resize_taps(ch, h, True, dy, im.shape[0])
    cols = _resize_taps(cw, w, False, dx, im.shape[1])
    if flip:
        cols = tuple(t[::-1] for t in cols)
    return _sample(im, rows, cols, scratch)


def crop_image(im: np.ndarray, dx: int, dy: int, w: int, h: int) -> np.ndarray:
    """darknet crop_image: the (w, h) window at (dx, dy); pixels outside repeat the nearest edge pixel."""
    r = np.clip(np.arange(h) + dy, 0, im.shape[0] - 1)
    c = np.clip(np.arange(w) + dx, 0, im.shape[1] - 1)
    return im[r][:, c]


def flip_image(im: np.ndarray) -> np.ndarray:
    """darknet flip_image: mirror the columns."""
    return np.ascontiguousarray(im[:, ::-1])


def letterbox_geometry(im_w: int, im_h: int, net_w: int, net_h: int) -> tuple[int, int, int, int]:
    """letterbox_image's (new_w, new_h, dx, dy): integer sizes (truncated) and embed offsets (pixels).

    An image more than net_w:1 wide (1x5000 at 416) truncates to 0 rows, where darknet then divides by
    zero (correct_region_boxes); it gets 1 row here (1 column for a tall one), so boxes stay finite.
    """
    if F32(net_w) / F32(im_w) < F32(net_h) / F32(im_h):
        new_w, new_h = net_w, max(1, (im_h * net_w) // im_w)
    else:
        new_h, new_w = net_h, max(1, (im_w * net_h) // im_h)
    return new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2   # extra pixel goes right/bottom


def letterbox_image(im: np.ndarray, w: int, h: int, scratch: Scratch | None = None) -> np.ndarray:
    """darknet letterbox_image: resize_image keeping the aspect ratio, embedded in a 0.5 grey (h, w, 3)."""
    new_w, new_h, dx, dy = letterbox_geometry(im.shape[1], im.shape[0], w, h)
    out = np.full((h, w, 3), F32(0.5), F32)
    # one row (an extreme aspect ratio): darknet's 1-row resize divides by h-1 = 0; row 0 of a
    # 2-row resize samples the source's row 0, the limit of darknet's formula
    out[dy:dy + new_h, dx:dx + new_w] = resize_image(im, new_w, max(new_h, 2), scratch)[:new_h]
    return out


def _place_grid(n_src: int, n_out: int, keep: np.ndarray) -> np.ndarray:
    """grid_sample coordinates of place_image's samples r = (x/w)*im.w for the output pixels `keep`.

    grid_sample (align_corners=False) reads source position ((g + 1) * n_src - 1) / 2; inverting that in
    double leaves ~1e-5 px of float32 rounding, far inside place_image's 1e-4 tolerance.
    """
    r = (np.arange(n_out, dtype=F32) / F32(n_out)) * F32(n_src)
    return ((2.0 * r[keep].astype(np.float64) + 1.0) / n_src - 1.0).astype(F32)


def place_region(im: np.ndarray, w: int, h: int, dx: int, dy: int, canvas_w: int, canvas_h: int,
                 flip: bool = False, scratch: Scratch | None = None
                 ) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The pixels place_image writes, and where: (values (h', w', 3) float32, (row slice, column slice)).

    Only the part inside the canvas is computed.  `flip` mirrors the placement in the canvas
    (place_image then flip_image) by reversing the sample columns, which costs nothing.
    """
    im = check_image(im)
    return place_samples(to_float(im) if im.dtype == np.uint8 else im, w, h, dx, dy, canvas_w, canvas_h,
                         flip, scratch)


def place_samples(src: np.ndarray, w: int, h: int, dx: int, dy: int, canvas_w: int, canvas_h: int,
                  flip: bool, scratch: Scratch | None) -> tuple[np.ndarray, tuple[slice, slice]]:
    """place_region on a float32 (H, W, 3) source of any scale (the loader passes raw 0..255 values).

    One fused bilinear pass: torch grid_sample, whose zero padding is darknet's get_pixel_extend.
    """
    ys = np.arange(max(dy, 0), min(dy + h, canvas_h))
    xs = np.arange(max(dx, 0), min(dx + w, canvas_w))
    y0, y1 = (int(ys[0]), int(ys[-1]) + 1) if len(ys) else (0, 0)
    x0, x1 = (int(xs[0]), int(xs[-1]) + 1) if len(xs) else (0, 0)
    gx, gy = _place_grid(src.shape[1], w, xs - dx), _place_grid(src.shape[0], h, ys - dy)
    if flip:
        gx, (x0, x1) = gx[::-1], (canvas_w - x1, canvas_w - x0)
    if not (len(gx) and len(gy)):  # nothing lands in the canvas (an extreme aspect ratio: h or w is 0)
        return np.zeros((len(gy), len(gx), 3), F32), (slice(y0, y1), slice(x0, x1))
    grid = _buf(scratch, "grid", (1, len(gy), len(gx), 2))
    grid[0, :, :, 0], grid[0, :, :, 1] = gx, gy[:, None]
    src = src if src.flags.writeable else src.copy()   # torch.from_numpy wants a writeable array
    planes = F.grid_sample(torch.from_numpy(src).permute(2, 0, 1)[None], torch.from_numpy(grid),
                           mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
    vals = cv2.merge(list(planes), dst=_buf(scratch, "place", (len(gy), len(gx), 3)))   # (3,h,w) -> (h,w,3)
    return vals, (slice(y0, y1), slice(x0, x1))


def place_image(im: np.ndarray, w: int, h: int, dx: int, dy: int, canvas: np.ndarray) -> np.ndarray:
    """darknet place_image: bilinear-resize `im` to (w, h) and write it at (dx, dy) into `canvas` (in place).

    Sampling is at x*im.w/w (not align corners); source pixels past the right/bottom edge read as black;
    writes outside the canvas are dropped.  Returns `canvas`.
    """
    vals, where = place_region(im, int(w), int(h), int(dx), int(dy), canvas.shape[1], canvas.shape[0])
    canvas[where] = vals
    return canvas


# --------------------------------------------------------------------------------------------- HSV
def rgb_to_hsv(im: np.ndarray) -> np.ndarray:
    """darknet rgb_to_hsv, float32 (H, W, 3) -> (h in [0,1], s, v); h is NaN for grey pixels (0/0)."""
    r, g, b = (im[..., k].astype(F32) for k in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(mx == 0, F32(0), delta / mx)
        h = np.where(r == mx, (g - b) / delta,
                     np.where(g == mx, F32(2) + (b - r) / delta, F32(4) + (r - g) / delta))
    h = np.where(h < 0, h + F32(6), h)
    h = (h.astype(np.float64) / 6.0).astype(F32)     # h/6. is a double division in C
    return np.stack([np.where(mx == 0, F32(0), h), s, mx], -1).astype(F32)


def hsv_to_rgb(im: np.ndarray) -> np.ndarray:
    """darknet hsv_to_rgb (no clamp); an index outside 0..5 (h == 1.0) falls to (v, p, q)."""
    h6 = F32(6) * im[..., 0]
    s, v = im[..., 1], im[..., 2]
    with np.errstate(invalid="ignore"):
        idx = np.floor(np.nan_to_num(h6, nan=-1.0)).astype(np.int64)
    f = h6 - idx.astype(F32)
    p, q, t = v * (F32(1) - s), v * (F32(1) - s * f), v * (F32(1) - s * (F32(1) - f))
    cond = [idx == k for k in range(5)]
    rgb = [np.select(cond, [v, q, p, p, t], v), np.select(cond, [t, v, v, q, p], p),
           np.select(cond, [p, p, t, v, v], q)]
    return np.stack([np.where(s == 0, v, c) for c in rgb], -1).astype(F32)


def distort_image(im: np.ndarray, hue: float, sat: float, val: float, out: np.ndarray | None = None,
                  scratch: Scratch | None = None) -> np.ndarray:
    """darknet distort_image + constrain_image: H += hue (wrapped), S *= sat, V *= val, clamp to [0, 1].

    Runs through OpenCV's float HSV (H in degrees), which wraps the hue itself and never divides by 0,
    so grey pixels give no NaN.  It equals darknet's per-pixel formulas to ~2e-6 except at darknet's
    own h == 1.0 quirk (README C, "fragile" pixels).  `out` may be a strided view (e.g. a canvas window).
    """
    im = np.ascontiguousarray(im, dtype=F32)
    hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV, dst=_buf(scratch, "hsv", im.shape))
    # OpenCV's vectorised HSV2RGB wraps hues >= 360 but not negative ones: shift those up a full turn
    shift = F32(hue) * F32(360) + (F32(360) if hue < 0 else F32(0))
    m = np.array([[1, 0, 0, shift], [0, F32(sat), 0, 0], [0, 0, F32(val), 0]], F32)
    hsv2 = cv2.transform(hsv, m, dst=_buf(scratch, "hsv2", im.shape))
    rgb = cv2.cvtColor(hsv2, cv2.COLOR_HSV2RGB, dst=hsv)
    return np.clip(rgb, F32(0), F32(1), out=np.empty(im.shape, F32) if out is None else out)
