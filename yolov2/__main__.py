"""`python -m yolov2 COMMAND ...`: one entry point, each command implemented in its module.

Every command is a function `main(argv: list[str]) -> int` (or a named one below) that builds
its own argparse parser, so `python -m yolov2 COMMAND --help` documents it (defaults, an example).
The shared option vocabulary is `yolov2.data.cli`.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("yolov2.data.synth", "main", "write the synthetic VOC-format dataset"),
    "labels": ("yolov2.data.darknet_data", "main", "darknet's YOLO label files and lists from a VOC devkit"),
    "anchors": ("yolov2.data.anchors", "main", "dimension clusters (IoU k-means) on a dataset"),
    "train": ("yolov2.train.command", "main", "train a cfg on a VOC devkit or a darknet .data dataset"),
    "detect": ("yolov2.detect.detector", "main_detect", "detect objects in images, draw and/or write JSON"),
    "valid": ("yolov2.detect.detector", "main_valid", "write darknet's comp4 result files for an image set"),
    "eval": ("yolov2.detect.evaluate", "main", "Pascal VOC AP/mAP of comp4 result files, PR curves"),
    "bench": ("yolov2.deploy.bench", "main", "inference benchmark against OpenCV's DNN"),
    "export": ("yolov2.deploy.export", "main", "export a model to ONNX"),
    "cfgs": ("yolov2.__main__", "main_cfgs", "list the shipped cfgs"),
}

EXAMPLES = """\
examples:
  python -m yolov2 synth --out data/synthetic --train 100 --test 20
  python -m yolov2 detect --cfg yolov2-tiny-synth --weights data/yolov2-tiny-synth.weights \\
      data/synthetic/VOC2007/JPEGImages --out drawn/
  python -m yolov2 COMMAND --help     # each command's options, defaults and an example"""


def usage() -> str:
    lines = ["usage: python -m yolov2 [--version] COMMAND [ARGS...]", "",
             "darknet's YOLOv2 in PyTorch: datasets, training, detection, evaluation, export.", "",
             "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join([*lines, "", EXAMPLES])


def main_cfgs(argv: list[str]) -> int:
    """`python -m yolov2 cfgs`: each shipped cfg with its input size, classes and anchors' count."""
    import argparse

    from yolov2.darknet.cfg import parse_cfg, shipped_cfgs, stock_cfg
    from yolov2.data.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m yolov2 cfgs", formatter_class=HelpFormatter,
                                description="List the cfgs shipped in the package: any command's --cfg "
                                            "takes these names as well as a path to a .cfg file.",
                                epilog="example:\n  python -m yolov2 cfgs")
    p.parse_args(argv)
    for name in shipped_cfgs():
        sections = parse_cfg(stock_cfg(name))
        net, region = sections[0], sections[-1]
        print(f"{name:<20} {net.get_int('width', 0)}x{net.get_int('height', 0)}  "
              f"classes={region.get_int('classes', 0):<3} anchors={region.get_int('num', 0)}  "
              f"layers={len(sections) - 1}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from yolov2 import __version__

        print(f"yolov2 {__version__}")
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
