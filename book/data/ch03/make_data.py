"""Rebuild this folder's box-size files (run from the repo root): `python book/data/ch03/make_data.py`.

Each `.npz` holds the *non-difficult* boxes darknet trains on (voc_label.py's selection) as integers,
so chapter 3 recovers `yolov2.data.anchors.dataset_wh`'s normalised sizes as `box_wh / image_wh`:

- `box_wh` (N, 2) int16: `xmax - xmin`, `ymax - ymin` in pixels, as in the VOC XML;
- `image_wh` (N, 2) int16: the width and height of the box's image.

`synth_train_seed0.npz`: the 2000 training images of `python -m yolov2 synth --train 2000 --seed 0`
(the split `yolov2-tiny-synth.cfg`'s anchors come from). `voc07_test.npz`: Pascal VOC 2007 test,
from `../shared/voc2007_test` (annotations only).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from yolov2.data import synth, voc

HERE = Path(__file__).parent


def box_sizes(root: Path, sets, classes) -> dict[str, np.ndarray]:
    """Integer box and image sizes of the non-difficult objects of `sets`, in load order."""
    box, image = [], []
    for record in voc.load_voc(root, sets, classes, require_images=False, cache=False):
        ann = record.annotation
        for o in ann.objects:
            if not o.difficult:
                box.append((o.xmax - o.xmin, o.ymax - o.ymin))
                image.append((ann.width, ann.height))
    return {"box_wh": np.array(box, np.int16), "image_wh": np.array(image, np.int16)}


def main(shared: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = synth.make_synthetic_voc(Path(tmp) / "synth", 2000, 0, seed=0)
        np.savez_compressed(HERE / "synth_train_seed0.npz",
                            **box_sizes(root, [("2007", "train")], synth.SYNTH_CLASSES))
    np.savez_compressed(HERE / "voc07_test.npz",
                        **box_sizes(shared / "voc2007_test", list(voc.TEST_SETS), voc.VOC_CLASSES))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared"))
