"""Darknet's two training augmentations, as pure functions of explicit random numbers.

Reference: darknet `src/data.c` (load_data_detection, load_data_region, fill_truth_detection,
fill_truth_region, correct_boxes, randomize_boxes), `src/utils.c` (rand_uniform, rand_scale),
`src/image.c` (random_distort_image).  Semantics: `shared/golden/prepost/README.md`, sections C and D.

Every random number darknet draws is a raw libc `rand()` value; the parameter dataclasses are built
from a stream of such values (`RandStream`), in darknet's draw order.  A test replays a darknet script;
training feeds the stream from a seeded `numpy.random.Generator`.  Same code either way.

Boxes: label rows are darknet's `(id, x, y, w, h)`, normalised centre-size in the source image.
Truth rows are darknet's `(x, y, w, h, id)`, normalised centre-size in the output canvas, shape
(T, 5) with T = max_boxes (30), zero rows after the kept ones.  The region loader (`augment_region`)
keeps darknet's crop-jitter image path and box correction but emits this same truth list (the YOLOv2
region loss consumes it), with fill_truth_region's drop rule (w or h < .005) instead of its grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from yolov2.data.image import (
    F32,
    Scratch,
    check_image,
    crop_resize_image,
    distort_image,
    letterbox_geometry,
    letterbox_image,
    place_samples,
    resize_image,
)

RAND_MAX = 2147483647
_RAND_MAX_F = F32(RAND_MAX)   # (float)RAND_MAX rounds to 2**31


# --------------------------------------------------------------------------------- random numbers
def rand_uniform(r: int, lo: float, hi: float) -> float:
    """darknet rand_uniform with the raw rand() value r: (float)r/RAND_MAX*(hi-lo)+lo in float32."""
    lo, hi = F32(lo), F32(hi)
    if hi < lo:
        lo, hi = hi, lo
    return float((F32(r) / _RAND_MAX_F) * (hi - lo) + lo)


def rand_scale(r_uniform: int, r_coin: int, s: float) -> float:
    """darknet rand_scale: uniform in [1, s], kept if the second rand() is odd, else its reciprocal (1./x)."""
    scale = rand_uniform(r_uniform, 1, s)
    return scale if r_coin % 2 else float(F32(1.0 / scale))


class RandStream:
    """A stream of raw libc rand() values: a darknet script, or draws from a numpy Generator."""

    def __init__(self, values: Iterable[int]) -> None:
        self._it: Iterator[int] = iter(values)

    @classmethod
    def from_generator(cls, rng: np.random.Generator, block: int = 64) -> RandStream:
        def draws() -> Iterator[int]:
            while True:
                yield from rng.integers(0, RAND_MAX, size=block, endpoint=True).tolist()
        return cls(draws())

    def rand(self) -> int:
        try:
            return int(next(self._it))
        except StopIteration:
            raise ValueError("rand() script exhausted: it has fewer values than darknet draws") from None

    def uniform(self, lo: float, hi: float) -> float:
        return rand_uniform(self.rand(), lo, hi)

    def scale(self, s: float) -> float:
        r = self.rand()
        return rand_scale(r, self.rand(), s)

    def permutation(self, n: int) -> tuple[int, ...]:
        """randomize_boxes: for i, swap(b[i], b[rand() % n]); returns the label order."""
        idx = list(range(n))
        for i in range(n):
            j = self.rand() % n
            idx[i], idx[j] = idx[j], idx[i]
        return tuple(idx)

    def distortion(self, hue: float, saturation: float, exposure: float) -> tuple[float, float, float]:
        """random_distort_image's draws: dhue, dsat, dexp (5 rand() calls)."""
        dhue = self.uniform(-hue, hue)
        dsat = self.scale(saturation)
        return dhue, dsat, self.scale(exposure)


def _stream(rand: RandStream | Iterable[int]) -> RandStream:
    return rand if isinstance(rand, RandStream) else RandStream(rand)


# ------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class DetectionParams:
    """load_data_detection's draws for one image.  nw, nh, dx, dy are canvas pixels (floats)."""

    new_ar: float
    nw: float
    nh: float
    dx: float
    dy: float
    dhue: float
    dsat: float
    dexp: float
    flip: bool
    perm: tuple[int, ...]
    jitter_w: float = 0.0   # the drawn rand_uniform(-dw, dw) added to the width
    jitter_h: float = 0.0

    @classmethod
    def from_rand(cls, rand: RandStream | Iterable[int], ow: int, oh: int, w: int, h: int, jitter: float,
                  hue: float, saturation: float, exposure: float, n_labels: int) -> DetectionParams:
        """Replay darknet's draws (after get_random_paths) for a source of ow x oh on a w x h canvas."""
        rs = _stream(rand)
        dw, dh = F32(jitter) * F32(ow), F32(jitter) * F32(oh)
        jw = F32(rs.uniform(-dw, dw))   # this gcc build evaluates the width draw first
        jh = F32(rs.uniform(-dh, dh))
        new_ar = (F32(ow) + jw) / (F32(oh) + jh)
        if new_ar < 1:
            nh = F32(h)
            nw = nh * new_ar
        else:
            nw = F32(w)
            nh = nw / new_ar
        dx = rs.uniform(0, F32(w) - nw)
        dy = rs.uniform(0, F32(h) - nh)
        dhue, dsat, dexp = rs.distortion(hue, saturation, exposure)
        flip = rs.rand() % 2 == 1
        return cls(float(new_ar), float(nw), float(nh), dx, dy, dhue, dsat, dexp, flip,
                   rs.permutation(n_labels), float(jw), float(jh))

    @property
    def place_ints(self) -> tuple[int, int, int, int]:
        """place_image's int arguments (w, h, dx, dy): C truncation toward zero."""
        return int(self.nw), int(self.nh), int(self.dx), int(self.dy)

    def truth_args(self, w: int, h: int) -> tuple[float, float, float, float]:
        """fill_truth_detection's (dx, dy, sx, sy) = (-dx/w, -dy/h, nw/w, nh/h) from the float geometry."""
        pairs = ((-self.dx, w), (-self.dy, h), (self.nw, w), (self.nh, h))
        return tuple(float(F32(a) / F32(b)) for a, b in pairs)


@dataclass(frozen=True)
class RegionParams:
    """load_data_region's draws for one image: side offsets in source pixels (negative pads)."""

    pleft: int
    pright: int
    ptop: int
    pbot: int
    flip: bool
    dhue: float
    dsat: float
    dexp: float
    perm: tuple[int, ...]

    @classmethod
    def from_rand(cls, rand: RandStream | Iterable[int], ow: int, oh: int, jitter: float, hue: float,
                  saturation: float, exposure: float, n_labels: int) -> RegionParams:
        """Replay darknet's draws (after get_random_paths): 4 offsets, flip, distortion, box shuffle."""
        rs = _stream(rand)
        dw, dh = int(F32(ow) * F32(jitter)), int(F32(oh) * F32(jitter))
        pleft, pright = int(rs.uniform(-dw, dw)), int(rs.uniform(-dw, dw))
        ptop, pbot = int(rs.uniform(-dh, dh)), int(rs.uniform(-dh, dh))
        flip = rs.rand() % 2 == 1
        dhue, dsat, dexp = rs.distortion(hue, saturation, exposure)
        return cls(pleft, pright, ptop, pbot, flip, dhue, dsat, dexp, rs.permutation(n_labels))

    def geometry(self, ow: int, oh: int) -> tuple[int, int, float, float, float, float]:
        """(swidth, sheight, sx, sy, dx, dy) of load_data_region for a source of ow x oh."""
        sw, sh = ow - self.pleft - self.pright, oh - self.ptop - self.pbot
        sx, sy = F32(sw) / F32(ow), F32(sh) / F32(oh)
        dx, dy = (F32(self.pleft) / F32(ow)) / sx, (F32(self.ptop) / F32(oh)) / sy
        return sw, sh, float(sx), float(sy), float(dx), float(dy)


# ------------------------------------------------------------------------------------------ truth
def as_labels(labels: np.ndarray) -> np.ndarray:
    """Check and convert label rows to (N, 5) float32 (id, x, y, w, h); an empty list is (0, 5)."""
    lab = np.asarray(labels, F32)
    if lab.size == 0:
        return lab.reshape(0, 5)
    if lab.ndim != 2 or lab.shape[1] != 5:
        raise ValueError(f"labels must be (N, 5) rows (id, x, y, w, h), got shape {lab.shape}")
    return lab


def correct_boxes(labels: np.ndarray, dx: float, dy: float, sx: float, sy: float, flip: bool) -> np.ndarray:
    """darknet read_boxes + correct_boxes: (N, 5) labels -> (N, 9) [id, x, y, w, h, left, right, top, bottom].

    Normalised coordinates: left = left*sx - dx (and so on), mirrored if flip, clamped to [0, 1].
    A label at x == y == 0 becomes 999999 everywhere (darknet's quirk) and keeps its read edges.
    """
    lab = as_labels(labels)
    x, y, w, h = lab[:, 1], lab[:, 2], lab[:, 3], lab[:, 4]
    edges = [x - w / F32(2), x + w / F32(2), y - h / F32(2), y + h / F32(2)]     # read_boxes
    left, right = edges[0] * F32(sx) - F32(dx), edges[1] * F32(sx) - F32(dx)
    top, bottom = edges[2] * F32(sy) - F32(dy), edges[3] * F32(sy) - F32(dy)
    if flip:   # `1. - right` is double arithmetic stored to float
        left, right = ((1.0 - v.astype(np.float64)).astype(F32) for v in (right, left))
    left, right, top, bottom = (np.clip(v, F32(0), F32(1)) for v in (left, right, top, bottom))
    cx, cy = (left + right) / F32(2), (top + bottom) / F32(2)
    cw, ch = np.clip(right - left, F32(0), F32(1)), np.clip(bottom - top, F32(0), F32(1))
    out = np.stack([lab[:, 0], cx, cy, cw, ch, left, right, top, bottom], 1).astype(F32)
    quirk = (x == 0) & (y == 0)
    out[quirk, 1:5] = 999999
    out[quirk, 5:] = np.stack(edges, 1)[quirk]
    return out


def fill_truth_detection(labels: np.ndarray, perm: Iterable[int], dx: float, dy: float, sx: float, sy: float,
                         flip: bool, max_boxes: int = 30, min_wh: float = .001) -> np.ndarray:
    """darknet fill_truth_detection: shuffle, correct, cap at max_boxes, drop w or h < min_wh -> (T, 5).

    Rows are (x, y, w, h, id), normalised centre-size; ids >= classes are kept, as darknet does.
    The cap comes BEFORE the drop, so a dropped box still uses up a slot.
    """
    boxes = correct_boxes(as_labels(labels)[list(perm)], dx, dy, sx, sy, flip)[:max_boxes]
    w, h = boxes[:, 3].astype(np.float64), boxes[:, 4].astype(np.float64)   # C compares float to double
    kept = boxes[~((w < min_wh) | (h < min_wh))]
    truth = np.zeros((max_boxes, 5), F32)
    truth[:len(kept)] = kept[:, [1, 2, 3, 4, 0]]
    return truth


def fill_truth_region(labels: np.ndarray, perm: Iterable[int], dx: float, dy: float, sx: float, sy: float,
                      flip: bool, side: int, classes: int) -> np.ndarray:
    """darknet fill_truth_region (YOLOv1 grid truth) -> (side*side, 5 + classes).

    Per cell: [1, one-hot id (only if id < classes), x*side - col, y*side - row, w, h]; boxes with
    w or h < .005 are skipped and the first box (after the shuffle) in a cell wins.
    """
    truth = np.zeros((side * side, 5 + classes), F32)
    for idc, x, y, w, h in correct_boxes(as_labels(labels)[list(perm)], dx, dy, sx, sy, flip)[:, :5]:
        if float(w) < .005 or float(h) < .005:
            continue
        if x == 999999:
            raise ValueError("fill_truth_region: a label at x == y == 0 (darknet indexes out of bounds)")
        col, row = int(x * F32(side)), int(y * F32(side))
        cell = truth[col + row * side]
        if cell[0]:
            continue
        cell[0] = 1
        if int(idc) < classes:
            cell[1 + int(idc)] = 1
        cell[1 + classes:] = [x * F32(side) - F32(col), y * F32(side) - F32(row), w, h]
    return truth


# --------------------------------------------------------------------------------------- loaders
def augment_detection(image: np.ndarray, labels: np.ndarray, params: DetectionParams, w: int, h: int,
                      max_boxes: int = 30, scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """load_data_detection for one image -> (canvas (h, w, 3) float32, truth (T, 5)).

    place_image on a 0.5 canvas at the truncated ints, random_distort_image, flip_image; the boxes use
    the float geometry.  Distortion is per pixel, so the border is distorted once as a single grey
    pixel and the flip is folded into the placement; the result is the same image.
    """
    image = check_image(image)
    # a uint8 source is sampled as raw 0..255 values; distort_image's V scale takes the /255 (V scales
    # every channel and leaves H and S alone), which saves a conversion pass
    raw = image.dtype == np.uint8
    pw, ph, pdx, pdy = params.place_ints
    src = image.astype(F32) if raw else image
    vals, (ys, xs) = place_samples(src, pw, ph, pdx, pdy, w, h, params.flip, scratch)
    canvas = np.empty((h, w, 3), F32)
    grey = distort_image(np.full((1, 1, 3), 0.5, F32), params.dhue, params.dsat, params.dexp)[0, 0]
    canvas[:ys.start], canvas[ys.stop:] = grey, grey
    canvas[ys, :xs.start], canvas[ys, xs.stop:] = grey, grey
    if vals.size:
        val = F32(params.dexp) / F32(255) if raw else params.dexp
        distort_image(vals, params.dhue, params.dsat, val, out=canvas[ys, xs], scratch=scratch)
    truth = fill_truth_detection(labels, params.perm, *params.truth_args(w, h), params.flip, max_boxes)
    return canvas, truth


def augment_region(image: np.ndarray, labels: np.ndarray, params: RegionParams, w: int, h: int,
                   max_boxes: int = 30, scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """load_data_region's image path (crop, resize, flip, distort) + its box correction -> (canvas, truth).

    Truth is the (T, 5) list of fill_truth_detection with fill_truth_region's .005 drop rule.
    """
    oh, ow = image.shape[:2]
    sw, sh, sx, sy, dx, dy = params.geometry(ow, oh)
    if sw < 1 or sh < 1:
        raise ValueError(f"crop of {sw}x{sh} from a {ow}x{oh} image: jitter too large")
    sized = crop_resize_image(image, params.pleft, params.ptop, sw, sh, w, h, params.flip, scratch)
    canvas = distort_image(sized, params.dhue, params.dsat, params.dexp, scratch=scratch)
    inv_sx, inv_sy = float(F32(1.0 / sx)), float(F32(1.0 / sy))     # 1./sx: double, passed as float
    truth = fill_truth_detection(labels, params.perm, dx, dy, inv_sx, inv_sy, params.flip, max_boxes, .005)
    return canvas, truth


class Augmenter:
    """Darknet's training augmentation for one image, drawing its numbers from a numpy Generator.

    kind "detection" is load_data_detection (darknet's train_detector); "region" is load_data_region.
    Picklable for DataLoader workers; each worker keeps its own work buffers.
    """

    def __init__(self, kind: str, jitter: float, hue: float, saturation: float, exposure: float,
                 max_boxes: int = 30) -> None:
        if kind not in ("detection", "region"):
            raise ValueError(f"Augmenter kind must be 'detection' or 'region', got {kind!r}")
        self.kind, self.jitter, self.max_boxes = kind, jitter, max_boxes
        self.hue, self.saturation, self.exposure = hue, saturation, exposure
        self._scratch = Scratch()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_scratch"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _scratch=Scratch())

    def sample(self, rng: np.random.Generator, ow: int, oh: int, w: int, h: int,
               n_labels: int) -> DetectionParams | RegionParams:
        """Draw this image's parameters (darknet's order) from `rng`."""
        rs = RandStream.from_generator(rng)
        hsv = (self.hue, self.saturation, self.exposure)
        if self.kind == "detection":
            return DetectionParams.from_rand(rs, ow, oh, w, h, self.jitter, *hsv, n_labels)
        return RegionParams.from_rand(rs, ow, oh, self.jitter, *hsv, n_labels)

    def __call__(self, image: np.ndarray, labels: np.ndarray, w: int, h: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 or float32 image, (N, 5) label rows -> (canvas (h, w, 3) float32, truth (T, 5))."""
        labels = as_labels(labels)
        params = self.sample(rng, image.shape[1], image.shape[0], w, h, len(labels))
        run = augment_detection if self.kind == "detection" else augment_region
        return run(image, labels, params, w, h, self.max_boxes, self._scratch)


class EvalTransform:
    """Test-time transform, no randomness: letterbox_image (darknet's test/valid) or plain resize_image."""

    def __init__(self, letterbox: bool = True, max_boxes: int = 30) -> None:
        self.letterbox, self.max_boxes = letterbox, max_boxes

    def __call__(self, image: np.ndarray, labels: np.ndarray, w: int, h: int,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (canvas (h, w, 3) float32, truth (T, 5)); boxes follow the image into the canvas."""
        labels = as_labels(labels)
        identity = range(len(labels))
        if not self.letterbox:
            canvas = resize_image(image, w, h)
            return canvas, fill_truth_detection(labels, identity, 0, 0, 1, 1, False, self.max_boxes)
        new_w, new_h, dx, dy = letterbox_geometry(image.shape[1], image.shape[0], w, h)
        canvas = letterbox_image(image, w, h)
        sx, sy = float(F32(new_w) / F32(w)), float(F32(new_h) / F32(h))
        ox, oy = float(F32(-dx) / F32(w)), float(F32(-dy) / F32(h))
        return canvas, fill_truth_detection(labels, identity, ox, oy, sx, sy, False, self.max_boxes)
