"""`python -m yolov2 COMMAND ...`: one entry point, each command implemented in its module.

Every command is a function `main(argv: list[str]) -> int` (or a named one below) that builds
its own argparse parser, so `python -m yolov2 COMMAND --help` documents it.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("yolov2.data.synth", "main", "write the synthetic VOC-format dataset"),
    "anchors": ("yolov2.data.anchors", "main", "dimension clusters (IoU k-means) on a dataset"),
    "train": ("yolov2.train.command", "main", "train a cfg on a VOC-layout dataset"),
    "detect": ("yolov2.detect.detector", "main_detect", "detect objects in images, draw and/or print JSON"),
    "valid": ("yolov2.detect.detector", "main_valid", "write darknet's comp4 result files for an image set"),
    "eval": ("yolov2.detect.evaluate", "main", "Pascal VOC AP/mAP of comp4 result files"),
    "bench": ("yolov2.deploy.bench", "main", "inference benchmark against OpenCV's DNN"),
    "export": ("yolov2.deploy.export", "main", "export a model to ONNX"),
}


def usage() -> str:
    lines = ["usage: python -m yolov2 COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command '{cmd}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except KeyboardInterrupt:  # commands that know more (train: the batch) say so themselves
        print(f"{cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
