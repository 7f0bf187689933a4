"""yolov2: darknet's YOLOv2 (tiny and full) rebuilt in PyTorch, exactly.

Public names are imported lazily (PEP 562), so `import yolov2` is cheap and sets no state.
Dimension letters used throughout: N batch, A anchors (darknet's `num`), C classes, H, W grid
(or image) height and width, T truths per image (30, darknet's cap).
"""

from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"

_LAZY = {
    "Darknet": "yolov2.darknet.model",
    "RegionLoss": "yolov2.loss.region_loss",
    "parse_cfg": "yolov2.darknet.cfg",
    "stock_cfg": "yolov2.darknet.cfg",
    "box_iou": "yolov2.darknet.boxes",
    "Detector": "yolov2.detect.detector",
    "Detections": "yolov2.detect.postprocess",
    "shipped_cfgs": "yolov2.darknet.cfg",
}

__all__ = sorted([*_LAZY, "fast_mode"])


def fast_mode() -> bool:
    """True when `YOLOV2_FAST=1` (set by `make test`/`make book`): shorten long runs, same code paths."""
    return os.environ.get("YOLOV2_FAST", "0") == "1"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'yolov2' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
