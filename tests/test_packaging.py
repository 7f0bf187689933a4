"""`pip install .` from a clone: the wheel holds the package, its cfgs and names, `py.typed` and the
`yolov2` command; the extras `[onnx]` and `[book]`; no setuptools warning; a missing optional dependency
is a one-line message naming the extra."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from yolov2.__main__ import main as cli
from yolov2.darknet.cfg import shipped_cfgs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """A wheel built as the README says, from a copy of the checkout's files (no build/ left behind)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list its files")
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "pyproject.toml", "README.md",
                            "yolov2"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (tmp / "src" / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tmp / "src" / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", ".",
                        "-w", str(tmp / "dist"), "-v"], cwd=tmp / "src", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = (tmp / "dist").glob("yolov2-*.whl")
    return whl, r.stdout + r.stderr


def test_wheel_contents(wheel):
    whl, _ = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    assert "yolov2/py.typed" in names and "yolov2/__main__.py" in names
    for cfg in shipped_cfgs():
        assert f"yolov2/darknet/cfgs/{cfg}.cfg" in names and f"yolov2/darknet/cfgs/{cfg}.names" in names
    for sub in ("files", "darknet", "data", "loss", "detect", "train", "deploy", "book"):
        assert f"yolov2/{sub}/__init__.py" in names
    assert {"yolov2/data/darknet_data.py", "yolov2/detect/plots.py"} <= names
    assert not any(n.startswith(("tests/", "book/")) or n.endswith(".ipynb") for n in names)
    meta = next(zipfile.ZipFile(whl).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "Provides-Extra: onnx" in meta and "Provides-Extra: book" in meta
    assert 'onnxruntime; extra == "onnx"' in meta and 'jupyterlab; extra == "book"' in meta
    entry = next(zipfile.ZipFile(whl).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "yolov2 = yolov2.__main__:main" in entry


def test_no_setuptools_warning(wheel):
    _, log = wheel
    noise = ("WARNING: Location", "byte-compiling is disabled")  # pip's index note; python -B
    warnings = [ln for ln in log.splitlines() if "warning" in ln.lower() and not any(n in ln for n in noise)]
    assert warnings == []


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    weights = str(ROOT / "data/yolov2-tiny-synth.weights")
    out = tmp_path / "x.onnx"
    rc = cli(["export", "--cfg", "yolov2-tiny-synth", "--weights", weights, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and 'pip install "yolov2[onnx]"' in err and "onnx" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()
