"""The README's examples run as written: every ```python block, from a folder laid out as the repository
(the shipped `data/yolov2-tiny-synth.weights`) after the README's own quick-start `synth` command, and the
printed output the README shows for the predict example is what it prints (numbers to their shown digits)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def quick_start_synth() -> list[str]:
    """The first `python -m yolov2 synth ...` line of the README's bash blocks, as argv."""
    for lang, code in BLOCKS:
        if lang == "bash":
            for line in code.splitlines():
                if line.startswith("python -m yolov2 synth"):
                    return shlex.split(line.split("#", 1)[0])
    raise AssertionError("the README shows no `python -m yolov2 synth` command")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder with the repository's shipped data files and the README's synthetic dataset."""
    here = tmp_path_factory.mktemp("readme")
    (here / "data").mkdir()
    for f in (ROOT / "data").iterdir():
        if f.is_file():
            (here / "data" / f.name).symlink_to(f)
    argv = quick_start_synth()
    run = subprocess.run([sys.executable, *argv[1:]], cwd=here, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return here


def run_block(code: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, f"README block failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
    return r.stdout


def test_readme_has_python_examples():
    assert len(PYTHON) >= 3
    assert any("Detector.load" in code for code in PYTHON)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs(index, clone):
    code = PYTHON[index]
    out = run_block(code, clone)
    if "Detector.load" in code and "labels()" in code:  # the five-line example: its shown output
        shown = README.split(code, 1)[1].split("prints\n\n```\n", 1)[1].split("```", 1)[0]
        numbers = [[float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", line)] for line in shown.splitlines()]
        got = [[float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", line)] for line in out.splitlines()]
        assert [line.split()[0] for line in out.splitlines()] == [s.split()[0] for s in shown.splitlines()]
        for a, b in zip(got, numbers, strict=True):  # the shown digits: probability .01, corners 1 px
            assert abs(a[0] - b[0]) <= 0.011
            assert max(abs(x - y) for x, y in zip(a[1:], b[1:], strict=True)) <= 1


VOC_COMMANDS = ROOT / "tools" / "voc_commands.sh"


def voc_commands() -> str:
    """tools/voc_commands.sh below its dashed line: what README and chapter 7 show."""
    return re.split(r"^# -{20,}\n", VOC_COMMANDS.read_text(), maxsplit=1, flags=re.M)[1]


def command_lines(script: str) -> list[list[str]]:
    """The script's commands as argv lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


class _Parsed(Exception):
    """Raised by the patched parse_args with the namespace a command's own parser produced."""


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """Run the package command argv names (`python -m yolov2 CMD ...` or `torchrun ... -m yolov2 CMD ...`)
    until its argparse parser has parsed the arguments: the namespace, or an AssertionError naming argv."""
    from yolov2.__main__ import COMMANDS

    at = argv.index("yolov2")
    assert argv[at - 1] == "-m" and argv[0] in ("python", "torchrun"), argv
    cmd, rest = argv[at + 1], argv[at + 2:]
    module, func, _ = COMMANDS[cmd]
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse):
        try:
            getattr(importlib.import_module(module), func)(rest)
        except _Parsed as parsed:
            return cmd, parsed.args[0]
        except SystemExit as e:
            raise AssertionError(f"`{' '.join(argv)}` is refused by `python -m yolov2 {cmd}` ({e})") from e
    raise AssertionError(f"`{' '.join(argv)}`: the command parsed no arguments")


def test_readme_full_voc_commands_are_the_tools_file():
    blocks = [code for lang, code in BLOCKS if lang == "bash" and "--partial 23" in code]
    assert blocks == [voc_commands()], "README's full-VOC block differs from tools/voc_commands.sh"


def test_full_voc_commands_parse_and_start_from_the_imagenet_backbones():
    lines = command_lines(voc_commands())
    downloads = {Path(argv[1]).name for argv in lines if argv[0] == "wget"}
    parsed = [parse_command(argv) for argv in lines if argv[0] != "wget"]
    trains = [args for cmd, args in parsed if cmd == "train"]
    assert {cmd for cmd, _ in parsed} == {"train", "valid", "eval"} and len(trains) == 4
    backbone = {"yolov2-tiny-voc": ("darknet.weights", 13), "yolov2-voc": ("darknet19_448.conv.23", 23)}
    for args in trains:  # every recipe starts from darknet's ImageNet backbone, none from scratch
        assert (args.pretrained, args.partial) == backbone[args.cfg], vars(args)
        assert args.data == "VOCdevkit" and args.eval_set == "2007:test" and args.weights is None
    assert downloads == {f for f, _ in backbone.values()}
    assert {(args.cfg, args.recipe) for args in trains} == {
        ("yolov2-tiny-voc", "darknet"), ("yolov2-tiny-voc", "adam"), ("yolov2-voc", "darknet")}
    outs = [args.out for args in trains]
    assert len(set(outs)) == len(outs)  # no run overwrites another's directory
