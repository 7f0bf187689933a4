"""Pack the VOC2007 test ground truth and the PyTorch port's detections into one compact npz.

    python tools/pack_voc2007_port.py [--shared ../shared] [--out book/data/ch09/voc2007_test_port.npz]

Reads `<shared>/voc2007_test` (VOC2007 test annotations, the port's `results_port/comp4_det_test_*.txt`
and `expected_port.json`) and writes what chapter 9 needs to reproduce the port's 57.7 without
`../shared`. Every value is exactly the one in the files; the script checks that by decoding what it
wrote and comparing with the parsed files (`float(text)`), value for value.

Keys (I images, G objects, D detections; boxes are VOC 1-based pixel corners `xmin ymin xmax ymax`):
- `classes` (20,) str; `image_ids` (I,) str, in `test.txt` order; `image_size` (I, 2) int16 `(w, h)`;
- `gt_image` (G,) uint16 index into `image_ids`; `gt_class` (G,) uint8; `gt_box` (G, 4) int16 (the
  XML's integers); `gt_difficult` (G,) bool. Objects in file order, images in `test.txt` order.
- `det_class` (D,) uint8; `det_image` (D,) uint16; per class in class order, each in file order (the
  order matters: the reference breaks score ties with numpy's unstable argsort of the file order).
- `det_score_planes` (4, D) uint8: the score as printed (`%f`, 6 decimals) times 10**6, a
  little-endian int32 split into byte planes (plane b holds byte b of every value); the int over
  1e6 is exactly `float(text)` (an integer < 2**53 over 1e6, correctly rounded).
- `det_box_planes` (4, 4*D) uint8: the (D, 4) boxes as little-endian float32 in byte planes, values
  column by column (all xmin, then ymin, ...). The port
  printed float32 values with `%f`, so the float32 recovers the text exactly: with `v` the float32,
  `v * 1e6` is exact in float64 (24 + 14 significant bits) and `rint(v * 1e6) / 1e6` is the printed
  decimal, correctly rounded as `float(text)` is. Byte planes deflate 20-25% better than plain
  4-byte values.
- `expected_<metric>_ap` (20,) float64 and `expected_<metric>_map` (), metric voc07 or voc10: the
  reference evaluation's numbers (py-faster-rcnn `voc_eval.py`) from `expected_port.json`.

Decode with `decode_scores` and `decode_boxes` below (chapter 9 does the same in a few lines).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from yolov2.data.voc import VOC_CLASSES
from yolov2.detect.evaluate import load_annotations, read_results


def byte_planes(values: np.ndarray, dtype: str) -> np.ndarray:
    """(D,) or (D, k) values -> (4, k*D) uint8: byte planes of the 4-byte `dtype`, column by column."""
    flat = np.ascontiguousarray(np.asarray(values).T.astype(dtype)).ravel()
    return np.ascontiguousarray(flat.view(np.uint8).reshape(-1, 4).T)


def from_planes(planes: np.ndarray, dtype: str) -> np.ndarray:
    """(4, n) byte planes -> the n values of the 4-byte `dtype` (column by column, as stored)."""
    return np.ascontiguousarray(planes.T).view(dtype).ravel()


def decode_scores(planes: np.ndarray) -> np.ndarray:
    """`det_score_planes` -> (D,) float64 scores exactly as printed with `%f`."""
    return from_planes(planes, "<i4") / 1e6


def decode_boxes(planes: np.ndarray) -> np.ndarray:
    """`det_box_planes` -> (D, 4) float64 boxes exactly as printed with `%f`."""
    v = from_planes(planes, "<f4").reshape(4, -1).T
    return np.rint(v.astype(np.float64) * 1e6) / 1e6


def ground_truth(root: Path) -> dict[str, np.ndarray]:
    annotations = load_annotations(root, "2007", "test")
    cls = {c: k for k, c in enumerate(VOC_CLASSES)}
    rows = [(k, cls[o.name], o.xmin, o.ymin, o.xmax, o.ymax, o.difficult)
            for k, ann in enumerate(annotations.values()) for o in ann.objects]
    table = np.array(rows, dtype=np.float64)  # (G, 7)
    assert np.array_equal(table[:, 2:6], np.round(table[:, 2:6])), "non-integer VOC box"
    return {"image_ids": np.array(list(annotations), dtype=str),
            "image_size": np.array([(a.width, a.height) for a in annotations.values()], np.int16),
            "gt_image": table[:, 0].astype(np.uint16), "gt_class": table[:, 1].astype(np.uint8),
            "gt_box": table[:, 2:6].astype(np.int16), "gt_difficult": table[:, 6].astype(bool)}


def detections(root: Path, image_ids: np.ndarray) -> dict[str, np.ndarray]:
    dets = read_results(root / "results_port", VOC_CLASSES, image_ids.tolist())
    index = {i: k for k, i in enumerate(image_ids.tolist())}
    cls = np.concatenate([np.full(len(dets[c].scores), k, np.uint8) for k, c in enumerate(VOC_CLASSES)])
    image = np.array([index[i] for c in VOC_CLASSES for i in dets[c].image_ids], np.uint16)
    scores = np.concatenate([dets[c].scores for c in VOC_CLASSES])  # float64, as parsed
    boxes = np.concatenate([dets[c].boxes for c in VOC_CLASSES])  # (D, 4) float64, as parsed
    score_planes = byte_planes(np.rint(scores * 1e6), "<i4")
    box_planes = byte_planes(boxes.astype(np.float32), "<f4")
    # the stored values must give back the parsed files exactly
    if not np.array_equal(decode_scores(score_planes), scores):
        raise SystemExit("a score has more than 6 decimals: det_score_planes would not be exact")
    bad = np.nonzero((decode_boxes(box_planes) != boxes).any(1))[0]
    if len(bad):
        raise SystemExit(f"{len(bad)} boxes are not float32 values printed with %f, e.g. {boxes[bad[0]]}")
    return {"classes": np.array(VOC_CLASSES, dtype=str), "det_class": cls, "det_image": image,
            "det_score_planes": score_planes, "det_box_planes": box_planes}


def expected(root: Path) -> dict[str, np.ndarray]:
    exp = json.loads((root / "expected_port.json").read_text())
    out = {}
    for metric in ("voc07", "voc10"):
        out[f"expected_{metric}_ap"] = np.array([exp[metric]["ap"][c] for c in VOC_CLASSES], np.float64)
        out[f"expected_{metric}_map"] = np.float64(exp[metric]["map"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    p.add_argument("--out", type=Path, default=Path("book/data/ch09/voc2007_test_port.npz"))
    args = p.parse_args(argv)
    root = args.shared / "voc2007_test"
    if not (root / "expected_port.json").is_file():
        print(f"{root}: not the VOC2007 test folder (no expected_port.json)", file=sys.stderr)
        return 1
    gt = ground_truth(root)
    arrays = {**gt, **detections(root, gt["image_ids"]), **expected(root)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(gt['image_ids'])} images, {len(gt['gt_class'])} objects, "
          f"{len(arrays['det_class'])} detections, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
