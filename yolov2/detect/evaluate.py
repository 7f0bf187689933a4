"""Pascal VOC average precision of detection results, with the reference evaluation's semantics.

Reference: py-faster-rcnn `lib/datasets/voc_eval.py` (`voc_ap`, `voc_eval`), the Python port of the
VOC devkit's `VOCevaldet.m` that darknet users run as `reval_voc.py`. The result files are the ones
darknet's `validate_detector` (examples/detector.c) writes: `comp4_det_test_<class>.txt`, one line
`image_id score xmin ymin xmax ymax` per detection.

Boxes here are **VOC pixel corners, 1-based inclusive**, with VOC's +1 area convention
(width = xmax - xmin + 1). Rules: a detection matches the ground-truth box of its image and class
with the largest IoU if that IoU is > 0.5 (strict); a match to a `difficult` box counts neither as
true nor as false positive; a second match to the same box is a false positive. Detections are
ranked by score, descending; ties keep file (or list) order.

Unlike the reference, which loops over detections in Python, the matching here is vectorised: the
best box of every detection does not depend on the others, so the only sequential rule ("first
detection of a box wins") is a first-occurrence lookup (`np.unique`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from yolov2.data.cli import add_data, add_image_set, add_names, parser
from yolov2.data.darknet_data import annotations_from_records, default_names, is_data_file, load_split
from yolov2.data.voc import VOC_CLASSES, Annotation, DatasetError, parse_annotation, read_image_set
from yolov2.files import read_text, write_files, write_text

METRICS = ("voc07", "voc10")
TIES = ("reference", "stable")
RESULT_PREFIX = "comp4_det_test_"


class ClassDetections(NamedTuple):
    """One class's detections: D image ids, scores (D,), boxes (D, 4) VOC 1-based pixel corners."""

    image_ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence]) -> ClassDetections:
        """From `(image_id, score, xmin, ymin, xmax, ymax)` tuples."""
        rows = list(rows)
        values = np.array([r[1:6] for r in rows], dtype=np.float64).reshape(-1, 5)
        return cls([str(r[0]) for r in rows], values[:, 0], values[:, 1:])


@dataclass
class PRCurve:
    """Precision and recall (D,) after each of the D ranked detections of one class, and their scores.

    recall is NaN for a class without non-difficult objects (npos = 0).
    """

    recall: np.ndarray
    precision: np.ndarray
    npos: int  # non-difficult ground-truth boxes
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (D,) descending


@dataclass
class EvalResult:
    """Per-class AP (None: no non-difficult object of that class) and their mean."""

    ap: dict[str, float | None]
    map: float
    metric: str
    curves: dict[str, PRCurve] = field(default_factory=dict)

    def to_json(self) -> dict:
        """`{"ap": {class: ap or None}, "map": m}` (m None when no class has objects)."""
        return {"ap": dict(self.ap), "map": None if np.isnan(self.map) else self.map}

    def table(self) -> str:
        """The per-class table and the mAP, in percent."""
        name = {"voc07": "VOC2007 11-point", "voc10": "VOC2010+ area"}[self.metric]
        width = max(len(c) for c in [*self.ap, "mAP"])
        lines = [f"{'class':<{width}}  AP ({name})"]
        for c, ap in self.ap.items():
            lines.append(f"{c:<{width}}  " + ("   n/a (no objects)" if ap is None else f"{100 * ap:6.1f}"))
        lines.append(f"{'mAP':<{width}}  {100 * self.map:6.1f}  ({self.map:.6f})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- AP from PR


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP from a PR curve: `voc07` 11-point interpolation, `voc10` area under the precision envelope."""
    if metric == "voc07":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the reference's thresholds, 0.30000000000000004 included
            above = recall >= t
            ap += (float(precision[above].max()) if above.any() else 0.0) / 11.0
        return ap
    if metric != "voc10":
        raise ValueError(f"unknown metric {metric!r} (choose from {METRICS})")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope: best precision to the right
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


# --------------------------------------------------------------------------- matching


class ClassTruth(NamedTuple):
    """One class's ground truth, sorted by image (file order within an image)."""

    boxes: np.ndarray  # (G, 4) VOC 1-based corners
    difficult: np.ndarray  # (G,) bool
    start: np.ndarray  # (I,) first row of each image
    count: np.ndarray  # (I,) rows per image


def class_truth(img: np.ndarray, boxes: np.ndarray, difficult: np.ndarray, n_images: int) -> ClassTruth:
    """One class's boxes: image index (G,), VOC corners (G, 4), difficult (G,), of n_images images."""
    order = np.argsort(img, kind="stable")
    count = np.bincount(img, minlength=n_images)
    return ClassTruth(boxes[order], difficult[order], np.cumsum(count) - count, count)


def voc_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of paired boxes (P, 4) and (P, 4), VOC 1-based corners with the +1 convention.

    Same operation order as the reference, so the > 0.5 decisions are bit-identical.
    """
    iw = np.maximum(np.minimum(gt[:, 2], det[:, 2]) - np.maximum(gt[:, 0], det[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], det[:, 3]) - np.maximum(gt[:, 1], det[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((det[:, 2] - det[:, 0] + 1.0) * (det[:, 3] - det[:, 1] + 1.0)
           + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
    return inters / uni


def match_detections(truth: ClassTruth, det_img: np.ndarray, det_boxes: np.ndarray,
                     iou_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """True/false positive flags (D,) of detections already ranked by score (VOC 1-based corners)."""
    cnt = truth.count[det_img]  # (D,) ground-truth boxes in each detection's image
    first = np.cumsum(cnt) - cnt
    pair_det = np.repeat(np.arange(len(det_img)), cnt)  # (P,) every (detection, box of its image)
    pair_gt = np.repeat(truth.start[det_img] - first, cnt) + np.arange(cnt.sum())
    iou = voc_iou(det_boxes[pair_det], truth.boxes[pair_gt])
    has = cnt > 0
    ovmax = np.full(len(det_img), -np.inf)
    if has.any():
        ovmax[has] = np.maximum.reduceat(iou, first[has])
    # the reference's argmax: the first box (file order) reaching the maximum
    at_max = np.nonzero(iou == ovmax[pair_det])[0]
    dets_at_max, first_at_max = np.unique(pair_det[at_max], return_index=True)
    jmax = np.full(len(det_img), -1)
    jmax[dets_at_max] = pair_gt[at_max[first_at_max]]
    hit = ovmax > iou_thresh
    counted = hit.copy()
    counted[hit] = ~truth.difficult[jmax[hit]]  # a difficult box's match: neither TP nor FP
    cand = np.nonzero(counted)[0]
    _, first_hit = np.unique(jmax[cand], return_index=True)  # first detection of each box wins
    tp = np.zeros(len(det_img), dtype=bool)
    tp[cand[first_hit]] = True
    fp = ~hit | (counted & ~tp)
    return tp, fp


# --------------------------------------------------------------------------- evaluation


def _as_class_dets(dets) -> ClassDetections:
    if isinstance(dets, ClassDetections):
        return dets
    return ClassDetections.from_rows(dets)


def _truth_arrays(annotations: Mapping[str, Annotation]):
    """Flat ground truth of all images: image index, class name, box, difficult (one row per object)."""
    img, names, boxes, difficult = [], [], [], []
    for k, ann in enumerate(annotations.values()):
        for o in ann.objects:
            img.append(k)
            names.append(o.name)
            boxes.append((o.xmin, o.ymin, o.xmax, o.ymax))
            difficult.append(o.difficult)
    return (np.array(img, dtype=np.int64), np.array(names, dtype=object),
            np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(difficult, dtype=bool))


def _image_index(ids: Sequence[str], index: Mapping[str, int], cls: str) -> np.ndarray:
    try:
        return np.array([index[i] for i in ids], dtype=np.int64)
    except KeyError as e:
        raise DatasetError(f"class {cls}: detection of image id {e.args[0]!r}, which is not in the "
                           f"annotations (image set)") from None


def rank_detections(scores: np.ndarray, ties: str = "reference") -> np.ndarray:
    """Indices of detections by score, descending.

    `reference`: voc_eval.py's own `np.argsort(-confidence)` (numpy's default introsort), which puts
    equal scores in numpy's order; the published numbers depend on it (the port's VOC2007 results
    have 28k tied scores; file order moves one class's AP by 1e-5). `stable`: ties keep file order.
    """
    if ties == "reference":
        return np.argsort(-scores)
    if ties == "stable":
        return np.argsort(-scores, kind="stable")
    raise ValueError(f"unknown tie order {ties!r} (choose from {TIES})")


def evaluate_class(truth: ClassTruth, det_img: np.ndarray, dets: ClassDetections, metric: str,
                   iou_thresh: float = 0.5, ties: str = "reference") -> tuple[float | None, PRCurve]:
    """AP and PR curve of one class; AP None when the class has no non-difficult object."""
    npos = int((~truth.difficult).sum())
    order = rank_detections(dets.scores, ties)
    tp, fp = match_detections(truth, det_img[order], dets.boxes[order], iou_thresh)
    tp, fp = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    scores = dets.scores[order]
    if npos == 0:
        return None, PRCurve(np.full_like(tp, np.nan), prec, 0, scores)
    rec = tp / float(npos)
    return voc_ap(rec, prec, metric), PRCurve(rec, prec, npos, scores)


def evaluate_detections(annotations: Mapping[str, Annotation], detections: Mapping[str, object],
                        classes: Sequence[str] = VOC_CLASSES, metric: str = "voc07",
                        iou_thresh: float = 0.5, ties: str = "reference") -> EvalResult:
    """VOC AP per class and mAP.

    annotations: image id -> Annotation (the image set). detections: class -> ClassDetections, or a
    list of `(image_id, score, xmin, ymin, xmax, ymax)` (VOC 1-based pixel corners); a class absent
    from `detections` has none. Classes without a non-difficult object get AP None, not in the mean.
    `ties`: order of equal scores, see `rank_detections`.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {METRICS})")
    index = {image_id: k for k, image_id in enumerate(annotations)}
    img, names, boxes, difficult = _truth_arrays(annotations)
    aps, curves = {}, {}
    for c in classes:
        dets = _as_class_dets(detections.get(c, []))
        m = names == c
        truth = class_truth(img[m], boxes[m], difficult[m], len(index))
        det_img = _image_index(dets.image_ids, index, c)
        aps[c], curves[c] = evaluate_class(truth, det_img, dets, metric, iou_thresh, ties)
    valid = [a for a in aps.values() if a is not None]
    return EvalResult(aps, float(np.mean(valid)) if valid else float("nan"), metric, curves)


# --------------------------------------------------------------------------- files


def load_annotations(voc_root: str | Path, year: str, image_set: str) -> dict[str, Annotation]:
    """Image id -> Annotation for every id of `VOC{year}/ImageSets/Main/{image_set}.txt`."""
    ids = read_image_set(voc_root, year, image_set)
    folder = Path(voc_root) / f"VOC{year}" / "Annotations"
    out = {}
    for i in ids:
        xml = folder / f"{i}.xml"
        if not xml.is_file():
            raise DatasetError(f"{xml}: missing annotation file (image id {i!r} of {image_set}.txt)")
        out[i] = parse_annotation(xml)
    return out


def _parse_results_file(path: Path, known: set[str] | None) -> ClassDetections:
    try:
        lines = read_text(path, DatasetError).splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read results file: {e.strerror or e}") from None
    fields = [(n, s.split()) for n, s in enumerate(lines, 1) if s.strip()]
    for n, f in fields:
        if len(f) != 6:
            raise DatasetError(f"{path}:{n}: expected 'image_id score xmin ymin xmax ymax', got "
                               f"{len(f)} fields: {lines[n - 1].strip()!r}")
    table = np.array([f for _, f in fields], dtype=object).reshape(-1, 6)
    try:
        values = table[:, 1:].astype(np.float64)
        ok = np.isfinite(values).all(axis=1)
    except ValueError:  # some field is not a number: find its line
        ok = np.array([_floats_ok(f[1:]) for _, f in fields])
    if not ok.all():
        n = fields[int(np.argmin(ok))][0]
        raise DatasetError(f"{path}:{n}: not a finite number in {lines[n - 1].strip()!r}")
    ids = table[:, 0].tolist()
    if known is not None:
        unknown = [k for k, i in enumerate(ids) if i not in known]
        if unknown:
            n = fields[unknown[0]][0]
            raise DatasetError(f"{path}:{n}: image id {ids[unknown[0]]!r} is not in the image set")
    return ClassDetections(ids, values[:, 0].copy(), values[:, 1:].copy())


def _floats_ok(texts: list[str]) -> bool:
    try:
        return all(np.isfinite(float(t)) for t in texts)
    except ValueError:
        return False


def read_results(results_dir: str | Path, classes: Sequence[str] = VOC_CLASSES,
                 image_ids: Iterable[str] | None = None,
                 prefix: str = RESULT_PREFIX) -> dict[str, ClassDetections]:
    """Read `<prefix><class>.txt` for every class (darknet's comp4 files) -> class -> detections.

    Every class needs its file (darknet's `valid` writes all, empty ones included). With `image_ids`,
    an id outside that set is an error naming the file and line.
    """
    results_dir = Path(results_dir)
    known = set(image_ids) if image_ids is not None else None
    paths = {c: results_dir / f"{prefix}{c}.txt" for c in classes}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: missing results file ({len(missing)} of {len(paths)} "
                           f"classes have none in {results_dir})")
    return {c: _parse_results_file(p, known) for c, p in paths.items()}


def write_results(results_dir: str | Path, detections: Mapping[str, object],
                  classes: Sequence[str] = VOC_CLASSES, prefix: str = RESULT_PREFIX) -> list[Path]:
    """Write darknet's result files (`%s %f %f %f %f %f` lines), one per class, empty ones included.

    All or nothing (`yolov2.files.write_files`): a failure leaves the folder's previous files as they were.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    texts = {}
    for c in classes:
        dets = _as_class_dets(detections.get(c, []))
        rows = np.column_stack([dets.scores, dets.boxes]).tolist()
        texts[results_dir / f"{prefix}{c}.txt"] = "".join(
            f"{i} {s:f} {a:f} {b:f} {x:f} {y:f}\n"
            for i, (s, a, b, x, y) in zip(dets.image_ids, rows, strict=True))
    return write_files(texts)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = parser("eval", __doc__.split("\n")[0] + " Ground truth: a VOC image set's XML, or the valid= list "
               "of a darknet .data file with its YOLO label files.",
               "python -m yolov2 eval --data data/synthetic --image-set test --results results/ "
               "--json map.json --plots plots/")
    g = p.add_argument_group("data")
    add_data(g)
    add_image_set(g)
    add_names(g)
    p.add_argument("--results", required=True, help="folder of comp4_det_test_<class>.txt files")
    p.add_argument("--metric", choices=METRICS, default="voc07",
                   help="voc07: 11-point interpolated AP; voc10: area under the precision envelope")
    p.add_argument("--ties", choices=TIES, default="reference",
                   help="order of equal scores: numpy's (as voc_eval.py) or file order")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help='write {"ap": {class: ap or null}, "map": m} here')
    g.add_argument("--plots", metavar="DIR", help="write ap.png (AP per class) and pr_curves.png here")
    g.add_argument("--force", action="store_true", help="overwrite an existing --json file or plots")
    return p


def dataset_annotations(data: str | Path, year: str, image_set: str,
                        classes: Sequence[str]) -> dict[str, Annotation]:
    """Ground truth of a VOC image set (XML), or of a darknet .data file's valid= list (its label files)."""
    if is_data_file(data):
        return annotations_from_records(load_split(data, "valid", len(classes)), classes)
    return load_annotations(data, year, image_set)


def main(argv: list[str]) -> int:
    from yolov2.detect.plots import AP_CHART, PR_CURVES, write_eval_plots  # matplotlib only when asked

    args = build_parser().parse_args(argv)
    try:
        outputs = [Path(args.json)] if args.json else []
        if args.plots:
            outputs += [Path(args.plots) / AP_CHART, Path(args.plots) / PR_CURVES]
        for f in outputs:
            if f.exists() and not args.force:
                raise DatasetError(f"{f}: exists (use --force to overwrite)")
        if args.json and not Path(args.json).parent.is_dir():
            raise DatasetError(f"{Path(args.json).parent}: no such folder for --json")
        classes = default_names(args.data, args.names)
        annotations = dataset_annotations(args.data, args.year, args.image_set, classes)
        detections = read_results(args.results, classes, annotations)
        result = evaluate_detections(annotations, detections, classes, args.metric, ties=args.ties)
        print(result.table())
        if args.json:
            write_text(args.json, json.dumps(result.to_json(), indent=1) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)
        if args.plots:
            for f in write_eval_plots(result, args.plots):
                print(f"wrote {f}", file=sys.stderr)
    except (DatasetError, OSError) as e:
        print(f"yolov2 eval: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yolov2 eval: interrupted; no output file was left half-written", file=sys.stderr)
        return 130
    return 0
