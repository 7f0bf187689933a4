"""Shared test helpers: where darknet's golden numbers are, and a clear skip when they are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# CI lays shared/ beside the clone; YOLOV2_SHARED overrides for other layouts.
SHARED = Path(os.environ.get("YOLOV2_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test with a message saying what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's shared golden data, present in CI; absent in this clone)")
    return p


def load_npz(path: Path) -> dict:
    """Every array of an .npz file, loaded without pickle."""
    import numpy as np

    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(autouse=True)
def _private_annotation_cache(monkeypatch, tmp_path_factory):
    """Keep the VOC annotation cache of every test inside pytest's temp dir, not in ~/.cache."""
    monkeypatch.setenv("YOLOV2_CACHE", str(tmp_path_factory.getbasetemp() / "yolov2-cache"))


def narrow_cfg_with_tiny_schedule(directory: Path) -> Path:
    """The narrow synthetic cfg's layers under yolov2-tiny-voc's `[net]` (rate .001, steps -1,100,...).

    The shipped narrow cfg's `[net]` is the CPU demo's recipe (rate .02 after a 100-batch burn_in), which
    barely moves a few-batch test run; the training tests assert darknet's stock tiny schedule instead.
    """
    from yolov2.darknet.cfg import stock_cfg

    def split(text: str) -> tuple[str, str]:
        head, _, rest = text.partition("[convolutional]")
        return head, "[convolutional]" + rest

    net, _ = split(stock_cfg("yolov2-tiny-voc").read_text())
    _, layers = split(stock_cfg("yolov2-tiny-synth").read_text())
    out = Path(directory) / "yolov2-tiny-synth.cfg"  # same stem: run files are named after it
    out.write_text(net + layers)
    return out


def random_truths(images: int, g: torch.Generator, most: int = 3, span: float = 0.5) -> torch.Tensor:
    """(images, 30, 5) darknet truths: 1 + b % most random boxes in image b (centres in .05-.95,
    sides .1 to .1 + span, classes 0-4), drawn from `g` box by box."""
    truth = torch.zeros(images, 30, 5)
    for b in range(images):
        for r in range(1 + b % most):
            truth[b, r, :2] = torch.rand(2, generator=g) * 0.9 + 0.05
            truth[b, r, 2:4] = torch.rand(2, generator=g) * span + 0.1
            truth[b, r, 4] = float(torch.randint(0, 5, (1,), generator=g))
    return truth


def cli(capsys, *args) -> tuple[int, str]:
    """Run `python -m yolov2 ARGS` in this process: (exit status, stderr)."""
    from yolov2.__main__ import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    return code, capsys.readouterr().err
