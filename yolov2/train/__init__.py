"""Training: darknet's `train_detector` loop (`trainer`), its settings and recipes (`settings`), the
learning-rate policies and SGD update (`schedule`), checkpoints (`checkpoint`), devices and ranks
(`runtime`) and the `train` command (`command`).

The public names are imported lazily, so `from yolov2.train import train, Trainer, Settings` works
and importing one module of this part does not import the others.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "train": "yolov2.train.command",
    "voc_map": "yolov2.train.command",
    "Trainer": "yolov2.train.trainer",
    "Settings": "yolov2.train.settings",
    "TrainError": "yolov2.train.settings",
    "TrainResult": "yolov2.train.settings",
    "RECIPES": "yolov2.train.settings",
    "Runtime": "yolov2.train.runtime",
    "Schedule": "yolov2.train.schedule",
    "read_log": "yolov2.train.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'yolov2.train' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
