"""Time VOC evaluation: yolov2.detect.evaluate (vectorised matching) against a per-detection Python loop.

The loop is the reference evaluation's algorithm as py-faster-rcnn's `voc_eval.py` writes it: for
each class, detections ranked by score, then one at a time, the IoU with the ground truth of its
image, the best box, and the "already detected" bookkeeping. Both run on the same parsed
annotations and result files, so the times compare the matching and AP alone; parsing is timed
separately. Data: `../shared/voc2007_test` (4,952 images, the PyTorch port's 160k detections).

    python benchmarks/bench_eval.py [--voc-root ../shared/voc2007_test] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from yolov2.data.voc import VOC_CLASSES
from yolov2.detect.evaluate import (
    evaluate_detections,
    load_annotations,
    rank_detections,
    read_results,
    voc_ap,
)

ROOT = Path(__file__).resolve().parents[1]


def baseline_class_ap(annotations: dict, dets, cls: str, metric: str) -> float | None:
    """One class, one detection at a time (voc_eval.py's loop)."""
    recs, npos = {}, 0
    for image_id, ann in annotations.items():
        objs = [o for o in ann.objects if o.name == cls]
        boxes = np.array([[o.xmin, o.ymin, o.xmax, o.ymax] for o in objs], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([o.difficult for o in objs], dtype=bool)
        npos += int((~difficult).sum())
        recs[image_id] = {"bbox": boxes, "difficult": difficult, "det": [False] * len(objs)}
    order = rank_detections(dets.scores)
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        r, bb = recs[dets.image_ids[k]], dets.boxes[k]
        ovmax, g = -np.inf, r["bbox"]
        if g.size:
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d], r["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return None
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), metric)


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voc-root", default=str(ROOT.parent / "shared" / "voc2007_test"))
    p.add_argument("--results", help="result files (default: <voc-root>/results_port)")
    p.add_argument("--metric", default="voc07", choices=("voc07", "voc10"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    root = Path(args.voc_root)
    t_ann, annotations = best_of(1, lambda: load_annotations(root, "2007", "test"))
    t_read, dets = best_of(1, lambda: read_results(args.results or root / "results_port", VOC_CLASSES,
                                                   annotations))
    n_det = sum(len(d.scores) for d in dets.values())
    print(f"{len(annotations)} images, {n_det} detections, {len(VOC_CLASSES)} classes, metric {args.metric}")
    print(f"parse annotations {t_ann:.2f} s, read result files {t_read:.2f} s (shared by both)")
    t_fast, fast = best_of(args.repeat,
                           lambda: evaluate_detections(annotations, dets, VOC_CLASSES, args.metric))
    t_base, base = best_of(1, lambda: {c: baseline_class_ap(annotations, dets[c], c, args.metric)
                                       for c in VOC_CLASSES})
    base_map = float(np.mean([a for a in base.values() if a is not None]))
    diff = max(abs(fast.ap[c] - base[c]) for c in VOC_CLASSES if base[c] is not None)
    print(f"yolov2.detect.evaluate:        {t_fast:7.3f} s   mAP {fast.map:.6f}")
    print(f"per-detection loop:     {t_base:7.3f} s   mAP {base_map:.6f}   (max AP difference {diff:.1e})")
    print(f"speed-up: {t_base / t_fast:.0f}x")


if __name__ == "__main__":
    main()
