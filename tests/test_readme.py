"""The README's examples run as written: every ```python block, from a folder laid out as the repository
(the shipped `data/yolov2-tiny-synth.weights`) after the README's own quick-start `synth` command, and the
printed output the README shows for the predict example is what it prints (numbers to their shown digits)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

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
