"""Class colours and labelled boxes drawn as darknet draws them, for `detect` and the book's figures.

Reference: darknet `src/image.c` (`get_color`, and `draw_detections`' colour offset
`class*123457 % classes`), so a drawing matches darknet's `predictions.png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np


class Boxes(Protocol):
    """What `draw_boxes` needs of a `yolov2.detect.postprocess.Detections` (which imports this module)."""

    def per_box(self) -> list[tuple[tuple[float, float, float, float], list[tuple[int, float]]]]: ...

# darknet's colour ramp: magenta, blue, cyan, green, yellow, red
_RAMP = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))


def _ramp(c: int, x: int, top: int) -> float:
    ratio = np.float32(x) / np.float32(top) * np.float32(5)
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    ratio -= i
    return float((1 - ratio) * _RAMP[i][c] + ratio * _RAMP[j][c])


def class_color(class_id: int, classes: int) -> tuple[float, float, float]:
    """Darknet's RGB colour (each in [0, 1]) of a class among `classes`."""
    offset = class_id * 123457 % classes
    return _ramp(2, offset, classes), _ramp(1, offset, classes), _ramp(0, offset, classes)


def draw_boxes(image: np.ndarray, dets: Boxes, class_names: Sequence[str]) -> np.ndarray:
    """(H, W, 3) RGB (float in [0, 1] or uint8) -> uint8 BGR copy with labelled boxes (cv2)."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)  # darknet's save_image truncates too
    out = np.ascontiguousarray(image[:, :, ::-1])
    h, w = out.shape[:2]
    width = max(1, int(h * 0.006))  # darknet's line width
    scale = max(0.35, h * 0.0012)
    for (x1, y1, x2, y2), classes in dets.per_box():
        r, g, b = class_color(classes[0][0], len(class_names))
        color = (int(255 * b), int(255 * g), int(255 * r))
        p1 = (int(np.clip(x1, 0, w - 1)), int(np.clip(y1, 0, h - 1)))
        p2 = (int(np.clip(x2, 0, w - 1)), int(np.clip(y2, 0, h - 1)))
        cv2.rectangle(out, p1, p2, color, width)
        text = ", ".join(f"{class_names[c]} {100 * p:.0f}%" for c, p in classes)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = p1[1] - th - base if p1[1] - th - base >= 0 else p1[1]  # above the box if it fits
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw, top + th + base), color, cv2.FILLED)
        cv2.putText(out, text, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
