"""The detection chapters' data switch (yolov2/book/source.py): the bundled demo by default, the
reader's VOC with YOLOV2_VOC and YOLOV2_WEIGHTS; one-line errors naming the variable and the path.
The last test runs chapter 9 under nbval on a second synthetic devkit (another seed) with a weights
file written by the package, as a reader with the real VOC would run it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_cache import get_cache

from yolov2.book.source import BookSource, SourceError, book_source
from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.darknet.weights import save_darknet_weights
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.data.voc import VOC_CLASSES

ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = ROOT / "data" / "yolov2-tiny-synth.weights"


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    """A small synthetic devkit with another seed than the demo's (seed 0)."""
    return make_synthetic_voc(tmp_path_factory.mktemp("other") / "VOCdevkit", 0, 12, seed=7)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The demo model, saved again by the package's darknet writer."""
    net = Darknet(stock_cfg("yolov2-tiny-synth"))
    net.load_weights(DEMO_WEIGHTS)
    path = tmp_path_factory.mktemp("weights") / "synth.weights"
    save_darknet_weights(net, path)
    return path


def error(env: dict[str, str]) -> str:
    with pytest.raises(SourceError) as e:
        book_source(DEMO_WEIGHTS, env).load_net()
    message = str(e.value)
    assert "\n" not in message, message
    return message


def test_default_is_the_bundled_demo() -> None:
    src = book_source(DEMO_WEIGHTS, {})
    assert src.bundled and src.devkit is None and src.names == SYNTH_CLASSES
    assert src.cfg.name == "yolov2-tiny-synth.cfg" and src.weights == DEMO_WEIGHTS
    assert "bundled synthetic VOC" in src.describe()
    assert src.load_net().num_classes == 5
    # empty variables count as unset
    assert book_source(DEMO_WEIGHTS, {"YOLOV2_VOC": "", "YOLOV2_WEIGHTS": " "}).bundled


def test_bundled_test_set_is_the_demo_split(tmp_path) -> None:
    root, annotations = book_source(DEMO_WEIGHTS, {}).test_set(3, tmp_path)
    assert list(annotations) == ["000000", "000001", "000002"]
    assert (root / "VOC2007" / "JPEGImages" / "000002.jpg").is_file()
    with pytest.raises(ValueError, match="number of images"):
        book_source(DEMO_WEIGHTS, {}).test_set(None, tmp_path / "x")


def test_a_devkit_with_weights_switches(devkit, weights, tmp_path) -> None:
    env = {"YOLOV2_VOC": str(devkit), "YOLOV2_WEIGHTS": str(weights), "YOLOV2_CFG": "yolov2-tiny-synth"}
    src = book_source(DEMO_WEIGHTS, env)
    assert not src.bundled and src.devkit == devkit and src.weights == weights
    assert src.names == SYNTH_CLASSES  # the devkit's classes.names
    assert (src.year, src.image_set) == ("2007", "test")
    assert str(devkit) in src.describe() and "your VOC" in src.describe()
    root, annotations = src.test_set(None, tmp_path)
    assert root == devkit and len(annotations) == 12
    assert list(src.test_set(5, tmp_path)[1]) == list(annotations)[:5]
    assert src.image_path(root, "000003") == devkit / "VOC2007" / "JPEGImages" / "000003.jpg"
    net = src.load_net()
    assert not net.training and net.num_classes == 5
    train = book_source(DEMO_WEIGHTS, {**env, "YOLOV2_IMAGE_SET": "2007:train"})
    assert train.image_set == "train" and train.test_set(None, tmp_path)[1] == {}


def test_relative_paths_are_taken_from_the_current_directory(devkit, weights, monkeypatch) -> None:
    monkeypatch.chdir(devkit.parent)
    env = {"YOLOV2_VOC": devkit.name, "YOLOV2_WEIGHTS": os.path.relpath(weights),
           "YOLOV2_CFG": "yolov2-tiny-synth"}
    src = book_source(DEMO_WEIGHTS, env)
    assert src.devkit == devkit and src.weights == weights


def test_voc_names_for_a_devkit_without_classes_names(devkit, tmp_path) -> None:
    # a 20-class cfg on a devkit that lists no names: VOC's 20
    (devkit / "classes.names").rename(tmp_path / "moved.names")
    try:
        net = Darknet(stock_cfg("yolov2-tiny-voc"))
        path = tmp_path / "voc.weights"
        save_darknet_weights(net, path)
        src = book_source(DEMO_WEIGHTS, {"YOLOV2_VOC": str(devkit), "YOLOV2_WEIGHTS": str(path)})
        assert src.cfg.name == "yolov2-tiny-voc.cfg" and src.names == VOC_CLASSES
        assert src.load_net().num_classes == 20
    finally:
        (tmp_path / "moved.names").rename(devkit / "classes.names")


def test_bad_settings_are_one_line_errors(devkit, weights, tmp_path) -> None:
    ok = {"YOLOV2_VOC": str(devkit), "YOLOV2_WEIGHTS": str(weights), "YOLOV2_CFG": "yolov2-tiny-synth"}
    assert "set without YOLOV2_VOC" in error({"YOLOV2_WEIGHTS": str(weights)})
    missing = tmp_path / "nowhere"
    assert error({**ok, "YOLOV2_VOC": str(missing)}) == (
        f"YOLOV2_VOC={missing}: no such directory (give the VOCdevkit folder that holds VOC2007/)")
    assert "no VOC2007/ImageSets/Main/test.txt" in error({**ok, "YOLOV2_VOC": str(tmp_path)})
    assert "no VOC2012/ImageSets/Main/test.txt" in error({**ok, "YOLOV2_IMAGE_SET": "2012:test"})
    assert "expected year:set" in error({**ok, "YOLOV2_IMAGE_SET": "test"})
    assert "YOLOV2_WEIGHTS is not" in error({k: v for k, v in ok.items() if k != "YOLOV2_WEIGHTS"})
    assert error({**ok, "YOLOV2_WEIGHTS": str(missing)}) == f"YOLOV2_WEIGHTS={missing}: no such file"
    message = error({**ok, "YOLOV2_CFG": "no-such-cfg"})
    assert message.startswith("YOLOV2_CFG: no-such-cfg: cfg file not found")
    assert "no such file" in error({**ok, "YOLOV2_CFG": str(tmp_path / "x.cfg")})
    # the default cfg is VOC's 20 classes; the synthetic devkit names 5
    message = error({k: v for k, v in ok.items() if k != "YOLOV2_CFG"})
    assert re.search(r"yolov2-tiny-voc.cfg: classes=20, but .*classes.names lists 5 class names", message)
    # weights of another size than the cfg's
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-400])
    message = error({**ok, "YOLOV2_WEIGHTS": str(short)})
    assert message.startswith(f"YOLOV2_WEIGHTS: {short}: the file holds") and "too short" in message


def test_source_is_frozen() -> None:
    src = book_source(DEMO_WEIGHTS, {})
    with pytest.raises(AttributeError):
        src.bundled = False  # type: ignore[misc]
    assert isinstance(src, BookSource)


@pytest.mark.slow
def test_chapter_9_runs_on_another_devkit(devkit, weights, tmp_path) -> None:
    """`YOLOV2_VOC=... YOLOV2_WEIGHTS=... make book` on chapter 9: nbval passes and the chapter says so.

    The book's nbval plugin (book/conftest.py) stores the executed chapter, outputs included, in a
    jupyter-cache, as `make test-chapters` does; the printed data line is read from there.
    """
    chapter = ROOT / "book" / "09_evaluation.ipynb"
    env = {**os.environ, "YOLOV2_VOC": str(devkit), "YOLOV2_WEIGHTS": str(weights),
           "YOLOV2_CFG": "yolov2-tiny-synth", "YOLOV2_FAST": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
           "--nbval-cell-timeout=300", f"--book-cache={tmp_path / 'cache'}", str(chapter)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"\d+ passed", out) and " failed" not in out, out[-4000:]
    _, run = get_cache(str(tmp_path / "cache")).merge_match_into_notebook(
        nbformat.read(chapter, as_version=4))
    printed = "".join(o.get("text", "") for c in run.cells if c.cell_type == "code" for o in c.outputs)
    assert f"data: your VOC at {devkit} (VOC2007 test, 5 classes)" in printed
    assert "bundled synthetic" not in printed
    assert "mAP" in printed  # the evaluation of the devkit's 12 images ran


def test_make_drops_the_execution_cache_when_the_data_switch_changes(tmp_path) -> None:
    """`make cache-mode`: the chapters' cached outputs go when YOLOV2_VOC/WEIGHTS/CFG/IMAGE_SET change."""
    build = tmp_path / "build"
    cache = build / ".jupyter_cache"
    base = {k: v for k, v in os.environ.items() if k not in ("YOLOV2_VOC", "YOLOV2_WEIGHTS", "YOLOV2_CFG",
                                                              "YOLOV2_IMAGE_SET", "MAKEFLAGS", "MFLAGS")}
    base["YOLOV2_FAST"] = "1"

    def cache_kept(**env: str) -> bool:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["make", "-s", "cache-mode", f"BUILD={build}"], cwd=ROOT, env={**base, **env},
                       check=True, capture_output=True, text=True)
        return cache.exists()

    cache_kept()  # the first run records the mode
    assert cache_kept()
    assert not cache_kept(YOLOV2_VOC="some/VOCdevkit", YOLOV2_WEIGHTS="w.weights")
    mode = (build / ".yolov2-mode").read_text()
    # relative paths made absolute (the chapters run in book/), from the repository root
    assert f"YOLOV2_VOC={ROOT / 'some/VOCdevkit'} " in mode and f"YOLOV2_WEIGHTS={ROOT / 'w.weights'}" in mode
    assert cache_kept(YOLOV2_VOC=str(ROOT / "some/VOCdevkit"), YOLOV2_WEIGHTS=str(ROOT / "w.weights"))
    # a shipped cfg's name stays a name
    voc = {"YOLOV2_VOC": "some/VOCdevkit", "YOLOV2_WEIGHTS": "w.weights", "YOLOV2_CFG": "yolov2-tiny-voc"}
    assert not cache_kept(**voc)
    assert "YOLOV2_CFG=yolov2-tiny-voc " in (build / ".yolov2-mode").read_text()
    assert not cache_kept(**voc, YOLOV2_IMAGE_SET="2012:val")
    assert not cache_kept()  # back to the bundled data
    assert not cache_kept(YOLOV2_FAST="0")  # and the fast switch, as before
