"""Dimension clusters: k-means on box sizes with distance 1 - IoU, the YOLOv2 anchors.

Reference: Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger" §2 "Dimension Clusters" (Figure 2:
mean IoU against k; Table 1: IoU clusters beat Euclidean ones and hand-picked priors).

Boxes are (w, h) only, all sharing one centre, as *normalised* sizes (fractions of the image side)
unless a name says cells. darknet v2's `anchors=` are in grid cells of 32 pixels:
w_cells = w * size / 32 (`to_cells`), so 13x13 at 416 has anchors up to 13.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

STRIDE = 32  # darknet v2's network downsampling: one grid cell is 32 input pixels


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors sharing a centre: wh (N, 2), anchors (K, 2) -> (N, K)."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union


def mean_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the IoU with the best anchor (the paper's "Avg IoU")."""
    return float(wh_iou(wh, anchors).max(axis=1).mean())


def _iou_distance(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return 1.0 - wh_iou(wh, centres)  # d(box, centroid) = 1 - IoU(box, centroid)


def _euclidean_distance(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.sqrt(((wh[:, None, :] - centres[None, :, :]) ** 2).sum(-1))


Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]


def kmeanspp_init(wh: np.ndarray, k: int, rng: np.random.Generator, distance: Distance) -> np.ndarray:
    """k-means++ seeding under `distance`: each next centre drawn with probability ∝ d(box, nearest)^2."""
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d2 = distance(wh, np.array(centres)).min(axis=1) ** 2
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(wh[rng.choice(len(wh), p=p)])
    return np.array(centres, dtype=np.float64)


def kmeans(
    wh: np.ndarray,
    k: int,
    distance: Distance,
    seed: int = 0,
    n_init: int = 3,
    iters: int = 300,
    power: int = 1,
) -> np.ndarray:
    """Lloyd's k-means (centroid = members' mean) under `distance`, best of `n_init` seeded starts.

    The best start minimises sum(d(box, nearest) ** power) — its own objective (power 1 for 1 - IoU,
    i.e. the highest mean IoU; 2 for Euclidean, the SSE). Returns (k, 2) centres sorted by area.
    """
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or len(wh) < k or k < 1 or not (wh > 0).all():
        raise ValueError(f"need >= k={k} positive (w, h) rows, got an array of shape {wh.shape}")
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(n_init):
        centres = _lloyd(wh, kmeanspp_init(wh, k, rng, distance), distance, iters)
        cost = (distance(wh, centres).min(axis=1) ** power).sum()
        if cost < best_cost:
            best, best_cost = centres, cost
    return best[np.argsort(best[:, 0] * best[:, 1])]


def _lloyd(wh: np.ndarray, centres: np.ndarray, distance: Distance, iters: int) -> np.ndarray:
    assign = None
    for _ in range(iters):
        d = distance(wh, centres)  # (N, K)
        new = d.argmin(axis=1)
        if assign is not None and (new == assign).all():
            break
        assign = new
        for j in range(len(centres)):
            members = wh[assign == j]
            # an empty cluster restarts at the box worst served by the others
            centres[j] = members.mean(axis=0) if len(members) else wh[d.min(axis=1).argmax()]
    return centres


def iou_kmeans(wh: np.ndarray, k: int, seed: int = 0, n_init: int = 3) -> np.ndarray:
    """The paper's dimension clusters: (k, 2) anchors (same units as wh) under d = 1 - IoU."""
    return kmeans(wh, k, _iou_distance, seed, n_init)


def euclidean_kmeans(wh: np.ndarray, k: int, seed: int = 0, n_init: int = 3) -> np.ndarray:
    """Plain k-means on (w, h) with Euclidean distance, for comparison: (k, 2)."""
    return kmeans(wh, k, _euclidean_distance, seed, n_init, power=2)


def mean_iou_curve(
    wh: np.ndarray, ks: Iterable[int] = range(1, 11), seed: int = 0, method: str = "iou"
) -> np.ndarray:
    """The paper's Figure 2: mean IoU of `method` ("iou" or "euclidean") clusters for each k: (len(ks),)."""
    fit = {"iou": iou_kmeans, "euclidean": euclidean_kmeans}[method]
    return np.array([mean_iou(wh, fit(wh, k, seed)) for k in ks])


def to_cells(anchors: np.ndarray, size: int = 416, stride: int = STRIDE) -> np.ndarray:
    """Normalised (K, 2) sizes -> darknet v2 anchors in grid cells for a `size`-pixel network."""
    return np.asarray(anchors) * size / stride


def format_anchors(cells: np.ndarray) -> str:
    """A cfg `anchors =` value: `w0,h0,  w1,h1, ...` with two decimals."""
    return ",  ".join(f"{w:.2f},{h:.2f}" for w, h in cells)


def dataset_wh(
    root: str | Path, sets: list[tuple[str, str]], classes: list[str] | tuple[str, ...]
) -> np.ndarray:
    """(N, 2) normalised (w, h) of the non-difficult boxes darknet trains on (voc_label.py's sizes)."""
    from yolov2.data.labels import record_labels
    from yolov2.data.voc import load_voc

    records = load_voc(root, sets, classes, require_images=False)
    rows = [record_labels(r, classes) for r in records]
    return np.concatenate([r[:, 3:5] for r in rows]) if rows else np.zeros((0, 2))


def _default_sets(root: Path) -> list[tuple[str, str]]:
    from yolov2.data.voc import TRAIN_SETS

    sets = [s for s in TRAIN_SETS if (root / f"VOC{s[0]}" / "ImageSets/Main" / f"{s[1]}.txt").is_file()]
    return sets or list(TRAIN_SETS)


def main(argv: list[str]) -> int:
    from yolov2.data.cli import add_data, add_names, parser
    from yolov2.data.darknet_data import default_names, is_data_file, load_split
    from yolov2.data.voc import DatasetError

    p = parser("anchors", __doc__.split("\n")[0] + " The boxes: a VOC devkit's image sets, or the train= "
               "list of a darknet .data file with its label files.",
               "python -m yolov2 anchors --data data/synthetic --k 5 --curve --plot anchors.png")
    add_data(p)
    add_names(p)
    p.add_argument("--k", type=int, default=5, help="number of anchors (cfg num=)")
    p.add_argument("--size", type=int, default=416, help="network input size for the cell units")
    p.add_argument("--sets", nargs="+", default=None,
                   help="YEAR/SET items of a devkit (default: the 07+12 trainval found)")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means initialisation")
    p.add_argument("--curve", action="store_true", help="also mean IoU for k = 1..10 (the paper's Figure 2)")
    p.add_argument("--plot", metavar="FILE", help="with --curve: draw it into FILE (.png, .svg, .pdf)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    a = p.parse_args(argv)
    root = Path(a.data)
    try:
        if a.plot and not a.curve:
            raise DatasetError("--plot draws the --curve: give both")
        if a.plot and Path(a.plot).exists() and not a.force:
            raise DatasetError(f"{a.plot}: exists (use --force to overwrite)")
        classes = default_names(root, a.names)
        if a.k < 1 or a.size < 32 or a.size % 32:
            raise DatasetError(f"--k {a.k} --size {a.size}: k must be at least 1 and size a positive "
                               f"multiple of 32")
        if is_data_file(root):
            sets = [(root.name, "train")]
            rows = [r.labels for r in load_split(root, "train", len(classes))]
            wh = np.concatenate([r[:, 3:5] for r in rows]) if rows else np.zeros((0, 2))
        else:
            sets = [tuple(s.split("/", 1)) for s in a.sets] if a.sets else _default_sets(root)
            if any(len(s) != 2 for s in sets):
                raise DatasetError(f"--sets items are YEAR/SET, e.g. 2007/train; got {a.sets}")
            wh = dataset_wh(root, sets, classes)
        if len(wh) < a.k:
            raise DatasetError(f"{root}: {len(wh)} boxes in {sets}, fewer than k={a.k}")
    except DatasetError as e:
        print(f"anchors: {e}", file=sys.stderr)
        return 2
    curves = _report(wh, a.k, a.size, a.seed, a.curve, sets)
    if a.plot:
        from yolov2.data.plots import anchor_curve_figure, save

        save(anchor_curve_figure(CURVE_KS, curves), a.plot)
        print(f"wrote {a.plot}")
    return 0


CURVE_KS = range(1, 11)


def _report(wh: np.ndarray, k: int, size: int, seed: int, curve: bool, sets) -> dict[str, np.ndarray]:
    print(
        f"{len(wh)} boxes from {', '.join('/'.join(s) for s in sets)}; k={k}, cells of {STRIDE} px at {size}"
    )
    for name, fit in (("IoU k-means", iou_kmeans), ("Euclidean k-means", euclidean_kmeans)):
        c = fit(wh, k, seed)
        print(f"{name:<17} mean IoU {mean_iou(wh, c):.4f}  anchors = {format_anchors(to_cells(c, size))}")
    curves = {}
    if curve:
        for name in ("iou", "euclidean"):
            curves[name] = mean_iou_curve(wh, CURVE_KS, seed, name)
            print(f"{name:>9} k=1..10:", " ".join(f"{v:.3f}" for v in curves[name]))
    return curves
