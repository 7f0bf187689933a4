"""A synthetic Pascal VOC: five shape classes drawn on textured, noisy backgrounds, offline.

`python -m yolov2 synth --out DIR --train N --test M --seed S` writes a real devkit layout
(`DIR/VOC2007/{JPEGImages,Annotations,ImageSets/Main/{train,trainval,test}.txt}`, `DIR/classes.names`)
that the package reads with the same code as the real VOC (`yolov2.data.voc.load_voc`).

The problem is small but fair: 1-5 objects per image, colours independent of class (the shape has to
be learnt), five aspect ratios (so anchors matter), sizes from ~12 px to image-filling (most between 8%
and 60% of the shorter image side), overlaps with occlusion by draw order, objects cut by the border,
image sizes around VOC's. As in VOC, an annotation boxes the *visible* pixels; an object cut by the
border or hidden by more than 15% is `truncated`, and `difficult` when it is tiny (box side geometric
mean < 12 px), hidden by more than 60%, or drawn at deliberately low contrast.

Each image comes from its own generator seeded by `(seed, split, index)`, so image i of a split is
the same whatever N is, and the JPEG bytes are identical run to run (cv2.imencode, fixed quality).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from yolov2.data.labels import write_class_names
from yolov2.data.voc import VOCObject
from yolov2.files import write_bytes, write_text

SYNTH_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "hbar", "vbar")
# width/height aspect range per class: circle 1:1, square ~1:1, triangle a little wide, bars 3:1 / 1:3
ASPECTS: dict[str, tuple[float, float]] = {
    "circle": (1.0, 1.0),
    "square": (0.8, 1.25),
    "triangle": (1.0, 1.3),
    "hbar": (2.5, 4.0),
    "vbar": (1 / 4.0, 1 / 2.5),
}
WIDTHS, HEIGHTS = (350, 500), (280, 500)  # image size ranges (inclusive), around VOC's 500x375
JPEG_QUALITY = 90
_SPLITS = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- background


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) -> (3,) float32 RGB in [0, 1]."""
    hsv = np.array([[[h * 360.0, s, v]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def draw_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-saturation blotches + gradient + clutter lines: (h, w, 3) float32 RGB in [0, 1]."""
    gh, gw = rng.integers(2, 9, size=2)
    base = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.25, 0.75))
    blotch = rng.normal(0, rng.uniform(0.02, 0.07), size=(gh, gw, 3)).astype(np.float32)
    blotch += rng.normal(0, rng.uniform(0.04, 0.12), size=(gh, gw, 1)).astype(np.float32)  # mostly grey
    img = base + cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-0.15, 0.15)
    img = img + ramp
    for _ in range(rng.integers(0, 12)):  # thin clutter: edges that are not objects
        p = rng.integers(0, (w, h), size=(2, 2))
        shade = float(rng.uniform(-0.25, 0.25))
        cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), (shade + img[p[0, 1], p[0, 0]]).tolist(),
                 int(rng.integers(1, 4)))  # fmt: skip
    return img


# --------------------------------------------------------------------------- objects


def sample_size(rng: np.random.Generator, side: int) -> float:
    """The longer box side in pixels: 8% tiny (12 px..8%), 85% 8-60% of `side`, 7% up to 95%."""
    u = rng.random()
    if u < 0.08:
        return rng.uniform(12, max(13.0, 0.08 * side))
    if u < 0.93:
        return side * math.exp(rng.uniform(math.log(0.08), math.log(0.6)))
    return side * rng.uniform(0.6, 0.95)


def sample_box(rng: np.random.Generator, cls: int, w: int, h: int) -> np.ndarray:
    """A full (unclipped) shape box, float pixel corners `(x0, y0, x1, y1)`; 10% may cross the border."""
    aspect = rng.uniform(*ASPECTS[SYNTH_CLASSES[cls]])
    s = sample_size(rng, min(w, h))
    bw, bh = (s, s / aspect) if aspect >= 1 else (s * aspect, s)
    out = 0.4 if rng.random() < 0.1 else 0.0  # let up to 40% of the box leave the image
    x0 = rng.uniform(-out * bw, w - bw * (1 - out))
    y0 = rng.uniform(-out * bh, h - bh * (1 - out))
    return np.array([x0, y0, x0 + bw, y0 + bh])


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], limit: float = 0.6) -> bool:
    """Whether `box` covers more than `limit` of the smaller of itself and any placed box (corners)."""
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw * ih > limit * smaller:
                return True
    return False


def shape_mask(cls: int, box: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """uint8 (shape) mask of the class's shape filling `box` (pixel corners), drawn at `origin`."""
    mask = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = (box - np.array([*origin, *origin])) * 16  # 4 fractional bits (shift=4)
    name = SYNTH_CLASSES[cls]
    if name == "circle":  # exact disc test at pixel centres (cv2.ellipse draws a coarse polygon)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        cx, cy, rx, ry = (x0 + x1) / 32, (y0 + y1) / 32, (x1 - x0) / 32, (y1 - y0) / 32
        mask[((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1] = 1
        return mask
    if name == "triangle":
        pts = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    else:
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    cv2.fillPoly(mask, [np.array(pts, np.int32)], 1, shift=4)
    return mask


def _paint(img: np.ndarray, owner: np.ndarray, k: int, cls: int, box, colour, rng) -> int:
    """Draw object k over `img` with a linear shading; mark its pixels in `owner`. Returns its full area."""
    bx0, by0 = math.floor(box[0]), math.floor(box[1])
    shape = (math.ceil(box[3]) - by0 + 1, math.ceil(box[2]) - bx0 + 1)
    mask = shape_mask(cls, box, (bx0, by0), shape)
    h, w = owner.shape
    ix0, iy0, ix1, iy1 = max(bx0, 0), max(by0, 0), min(bx0 + shape[1], w), min(by0 + shape[0], h)
    m = mask[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0].astype(bool)
    gx, gy = rng.uniform(-0.25, 0.25, size=2)  # shading so objects are not flat stickers
    ramp = 1 + gx * np.linspace(-1, 1, ix1 - ix0)[None, :] + gy * np.linspace(-1, 1, iy1 - iy0)[:, None]
    img[iy0:iy1, ix0:ix1][m] = (ramp[..., None] * colour)[m]
    owner[iy0:iy1, ix0:ix1][m] = k + 1
    return int(mask.sum())


def _colour(rng: np.random.Generator, img: np.ndarray, box) -> tuple[np.ndarray, bool]:
    """A saturated random colour, or (4%) one close to the local background: (RGB, low_contrast)."""
    if rng.random() < 0.04:
        x = int(np.clip((box[0] + box[2]) / 2, 0, img.shape[1] - 1))
        y = int(np.clip((box[1] + box[3]) / 2, 0, img.shape[0] - 1))
        return img[y, x] + rng.uniform(-0.06, 0.06, size=3).astype(np.float32), True
    return _hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.45, 1.0)), False


def _annotate(owner: np.ndarray, k: int, cls: int, area: int, low: bool, cut: bool) -> VOCObject | None:
    """VOC object of the visible pixels of object k: 1-based inclusive corners, flags by the rules above."""
    ys, xs = np.nonzero(owner == k + 1)
    if len(xs) == 0:
        return None
    visible = len(xs) / max(area, 1)
    x0, y0, x1, y1 = xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1
    if x1 <= x0 or y1 <= y0:
        return None  # a one-pixel sliver is no object
    tiny = math.sqrt((x1 - x0 + 1) * (y1 - y0 + 1)) < 12
    difficult = tiny or low or visible < 0.4
    truncated = cut or visible < 0.85
    return VOCObject(SYNTH_CLASSES[cls], float(x0), float(y0), float(x1), float(y1), difficult, truncated)


def render_image(rng: np.random.Generator, with_owner: bool = False) -> tuple:
    """One synthetic image: (H, W, 3) uint8 **BGR** (for cv2.imencode) and its VOC objects.

    `with_owner` adds the (H, W) uint8 map of which drawn object (1-based, 0: background) shows at
    each pixel, for tests and figures.
    """
    w, h = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1)), int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
    img = draw_background(rng, w, h)
    owner = np.zeros((h, w), np.uint8)
    placed, drawn = [], []
    for k in range(int(rng.integers(1, 6))):
        cls = int(rng.integers(len(SYNTH_CLASSES)))
        for _ in range(10):  # re-place rather than bury an object under another
            box = sample_box(rng, cls, w, h)
            if not _overlaps(box, placed):
                break
        else:
            continue
        colour, low = _colour(rng, img, box)
        area = _paint(img, owner, k, cls, box, colour, rng)
        cut = box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h
        placed.append(box)
        drawn.append((k, cls, area, low, cut))
    sigma = rng.uniform(0.01, 0.05)  # sensor-like noise; uniform draws cost 1/6 of normal ones
    img += (rng.random((h, w, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(sigma * math.sqrt(12))
    objects = [_annotate(owner, *d) for d in drawn]
    bgr = cv2.cvtColor(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    objects = [o for o in objects if o is not None]
    return (bgr, objects, owner) if with_owner else (bgr, objects)


# --------------------------------------------------------------------------- devkit writer


def voc_xml(filename: str, w: int, h: int, objects: list[VOCObject]) -> str:
    """A VOC annotation file's text (corners as integers, 1-based inclusive)."""
    objs = "".join(
        f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>{int(o.truncated)}</truncated>\n\t\t<difficult>{int(o.difficult)}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{int(o.xmin)}</xmin>\n\t\t\t<ymin>{int(o.ymin)}</ymin>\n"
        f"\t\t\t<xmax>{int(o.xmax)}</xmax>\n\t\t\t<ymax>{int(o.ymax)}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for o in objects
    )
    return (
        f"<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<source>\n\t\t<database>yolov2 synthetic VOC</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objs}</annotation>\n"
    )


def _write_image(base: Path, image_id: str, rng: np.random.Generator) -> None:
    bgr, objects = render_image(rng)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for {image_id}")
    # atomic (no half-written file after a crash or a full disk), not fsynced one by one: synth.json is
    write_bytes(base / "JPEGImages" / f"{image_id}.jpg", jpg.tobytes(), durable=False)
    h, w = bgr.shape[:2]
    xml = voc_xml(f"{image_id}.jpg", w, h, objects)
    write_text(base / "Annotations" / f"{image_id}.xml", xml, durable=False)


def make_synthetic_voc(
    out: str | Path, n_train: int, n_test: int, seed: int = 0, force: bool = False
) -> Path:
    """Write the synthetic devkit under `out` (refusing a non-empty `out` unless `force`); returns `out`.

    Image ids are `000000`.. for train then test; `trainval.txt` equals `train.txt`.
    """
    out = Path(out)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"image counts must be >= 0, got train={n_train} test={n_test}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out}: exists and is not an empty directory (use --force to overwrite)")
    base = out / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [f"{i:06d}" for i in range(n_train)],
           "test": [f"{i:06d}" for i in range(n_train, n_train + n_test)]}  # fmt: skip
    for split, split_ids in ids.items():
        for i, image_id in enumerate(split_ids):
            _write_image(base, image_id, np.random.default_rng((seed, _SPLITS[split], i)))
        write_text(base / "ImageSets/Main" / f"{split}.txt", "".join(f"{i}\n" for i in split_ids))
    write_text(base / "ImageSets/Main/trainval.txt", "".join(f"{i}\n" for i in ids["train"]))
    write_class_names(out / "classes.names", SYNTH_CLASSES)
    meta = {"generator": "yolov2.data.synth", "seed": seed, "train": n_train, "test": n_test}
    write_text(out / "synth.json", json.dumps(meta, indent=1) + "\n")  # last: the devkit is complete
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m yolov2 synth", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m yolov2 synth --out data/synthetic --train 100 "
                                "--test 20 --seed 0")
    p.add_argument("--out", required=True, help="output directory (the devkit root)")
    p.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--test", type=int, default=500, help="test images (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    a = p.parse_args(argv)
    t = time.perf_counter()
    try:
        make_synthetic_voc(a.out, a.train, a.test, a.seed, a.force)
    except (FileExistsError, ValueError) as e:
        print(f"synth: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: WriteError names the file
        print(f"synth: {e}", file=sys.stderr)
        return 1
    n = a.train + a.test
    print(f"wrote {n} images to {a.out} in {time.perf_counter() - t:.1f} s")
    return 0
