"""Issue 15: every bad input is one clear line naming the file, every output is atomic, and nothing of the
user's is ever deleted. One test (at least) per numbered defect: `test_itemNN_...`.

A full disk is simulated by patching the write (`full_disk`: files whose path contains a name share a
byte budget, then ENOSPC, as a real disk does), and made real with a small tmpfs where the tests run as
root and may mount one (`small_tmpfs`; skipped with a message elsewhere).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
from conftest import cli

from yolov2.__main__ import main as yolov2_main
from yolov2.darknet.cfg import CfgError, stock_cfg
from yolov2.darknet.model import Darknet
from yolov2.data.augment import Augmenter, EvalTransform
from yolov2.data.dataset import DetectionDataset
from yolov2.data.image import ImageError, letterbox_image, load_image, read_image
from yolov2.data.labels import read_class_names
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.data.voc import DatasetError, load_voc, read_image_set
from yolov2.detect.detector import Detector, detections_to_json
from yolov2.detect.postprocess import Detections
from yolov2.train.checkpoint import plot_log

ROOT = Path(__file__).resolve().parents[1]
SYNTH = stock_cfg("yolov2-tiny-synth")
WEIGHTS = ROOT / "data" / "yolov2-tiny-synth.weights"
TRAIN = ["--batch", "4", "--sizes", "64", "--workers", "0", "--device", "cpu", "--no-progress"]


# --------------------------------------------------------------------------- helpers


def last_line(err: str) -> str:
    """The error line (valid's progress bar writes to stderr before it)."""
    return err.strip().splitlines()[-1] if err.strip() else ""


def assert_one_clear_line(err: str, *words: str) -> None:
    assert "Traceback" not in err, err
    line = last_line(err)
    for w in words:
        assert str(w) in line, (w, err)


@contextmanager
def full_disk(match: str, budget: int = 0, error=None):
    """Files opened for writing whose path contains `match` share `budget` bytes, then ENOSPC (the write
    that crosses the limit is cut, as on a full disk), or `error` (e.g. Ctrl-C mid-write)."""
    real = io.open
    left = [budget]

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if len(data) > left[0]:
                self._f.write(data[:left[0]])
                left[0] = 0
                raise error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(data)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kw):
        f = real(file, mode, *args, **kw)
        named = isinstance(file, (str, os.PathLike)) and match in os.fspath(file)
        return Full(f) if named and any(c in mode for c in "wxa+") else f

    with mock.patch.object(builtins, "open", fake_open), mock.patch.object(io, "open", fake_open):
        yield


@contextmanager
def small_tmpfs(where: Path, size: str):
    """A real filesystem of `size` (a tmpfs) at `where`, or skip saying why it cannot be made here."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full disk needs root to mount a small tmpfs; the full_disk tests cover the code")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the full_disk tests cover the code")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Take all but `leave` bytes of the filesystem of `folder`."""
    st = os.statvfs(folder)
    (folder / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def png_header(w: int, h: int) -> bytes:
    """A small PNG file whose header says w x h (a decompression bomb's shape, without its data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("rel") / "voc", 8, 4, seed=5)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, voc) -> Path:
    """A finished 2-batch run (checkpoint.pt, log.csv, run.json, weights) to copy and tamper with."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = yolov2_main(["train", str(SYNTH), str(voc), "--out", str(out), "--max-batches", "2", *TRAIN])
    assert code == 0
    return out


def copy_run(trained_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def valid_args(voc: Path, out: Path) -> list:
    return ["valid", "--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS, "--voc-root", voc, "--image-set",
            "test", "--out", out, "--classes", voc / "classes.names", "--device", "cpu"]


def eval_args(voc: Path, results: Path) -> list:
    return ["eval", "--voc-root", voc, "--image-set", "test", "--results", results, "--classes",
            voc / "classes.names"]


# --------------------------------------------------------------------------- 1. data loss


def test_item01_train_never_deletes_user_files(voc, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    mine = d / "p.weights"
    shutil.copy(WEIGHTS, mine)
    (d / "notes.txt").write_text("the user's")
    user = files_of(d)
    train = ["train", "yolov2-tiny-synth", voc, "--out", d, "--weights", mine, "--max-batches", "2", *TRAIN]
    code, err = cli(capsys, *train)  # the command: it deleted p.weights, then could not read it
    assert code == 1
    assert_one_clear_line(err, f"{d}: holds files that are not a run's", "p.weights", "--force")
    assert files_of(d) == user
    train.append("--clear")  # p.weights is the trained demo model: its seen is past --max-batches 2
    code, err = cli(capsys, *train, "--force")  # --force trains, from p.weights, and keeps the user's files
    assert code == 0, err
    assert {k: v for k, v in files_of(d).items() if k in user} == user
    recorded = json.loads((d / "run.json").read_text())["files"]
    assert "p.weights" not in recorded and "notes.txt" not in recorded and "checkpoint.pt" in recorded
    (d / "eval.json").write_text("the user's too: no run wrote it here")
    code, err = cli(capsys, *train, "--force")  # a second run deletes the first run's files only
    assert code == 0, err
    assert (d / "eval.json").read_text().startswith("the user's")
    assert files_of(d)["p.weights"] == user["p.weights"]


def test_item01_a_run_would_not_overwrite_its_own_weights_file(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    final = run / "yolov2-tiny-synth_final.weights"
    before = files_of(run)
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--weights", final, "--force",
                    "--max-batches", "2", *TRAIN)
    assert code == 1
    assert_one_clear_line(err, str(final), "this run would overwrite it")
    assert files_of(run) == before


def test_item01_out_dot_keeps_every_weights_file(voc, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.weights", "b.weights", "loss.png"):
        (tmp_path / name).write_bytes(b"the user's " + name.encode())
    before = files_of(tmp_path)
    code, err = cli(capsys, "train", SYNTH, voc, "--out", ".", "--max-batches", "1", *TRAIN)
    assert code == 1 and "holds files that are not a run's" in err
    assert files_of(tmp_path) == before


# --------------------------------------------------------------------------- 2, 3. atomic outputs, full disk


def test_item02_valid_on_a_full_disk_changes_no_result_file(voc, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli(capsys, *valid_args(voc, out))[0] == 0
    before = files_of(out)
    with full_disk("comp4_det_test_", budget=64):
        code, err = cli(capsys, *valid_args(voc, out), "--force")
    assert code == 1
    assert_one_clear_line(err, "yolov2 valid: error: no space left on device writing", str(out),
                          "none of the 5 files was changed")
    assert files_of(out) == before  # the previous results, whole, and no temporary file
    assert cli(capsys, *eval_args(voc, out))[0] == 0


def test_item02_valid_on_a_real_full_disk_leaves_no_cut_file(voc, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk, leave=8192)
        out = disk / "results"
        code, err = cli(capsys, *valid_args(voc, out))
        assert code == 1
        assert_one_clear_line(err, "no space left on device writing", str(out))
        assert sorted(p.name for p in out.iterdir()) == []  # nothing eval could take for complete
        code, err = cli(capsys, *eval_args(voc, out))
        assert code == 1 and "missing results file" in err


@pytest.mark.parametrize("output", ["detect drawing", "eval json", "onnx export", "weights", "loss plot"])
def test_item02_every_output_is_atomic_on_a_full_disk(voc, tmp_path, capsys, output):
    image = voc / "VOC2007" / "JPEGImages" / "000008.jpg"
    out = tmp_path / "out"
    out.mkdir()
    target = out / {"detect drawing": "000008.jpg", "eval json": "map.json", "onnx export": "model.onnx",
                    "weights": "w.weights", "loss plot": "loss.png"}[output]
    target.write_bytes(b"the previous, complete file")
    with full_disk(target.name, budget=100):
        if output == "detect drawing":
            code, err = cli(capsys, "detect", image, "--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS,
                            "--names", voc / "classes.names", "--out", out, "--force", "--device", "cpu")
        elif output == "eval json":
            results = tmp_path / "results"
            assert cli(capsys, *valid_args(voc, results))[0] == 0
            code, err = cli(capsys, *eval_args(voc, results), "--json", target, "--force")
        elif output == "onnx export":
            code, err = cli(capsys, "export", "--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS, "--out",
                            target, "--force")
        else:
            with pytest.raises(OSError) as e:
                if output == "weights":
                    Darknet(SYNTH).save_weights(target)
                else:
                    plot_log({k: np.arange(1.0, 4.0) for k in ("batch", "loss", "avg_loss", "avg_iou",
                                                               "avg_recall")}, target)
            code, err = 1, f"error: {e.value}"
    assert code == 1
    assert_one_clear_line(err, f"no space left on device writing {target}",
                          f"the previous {target.name} is intact")
    assert files_of(out) == {target.name: b"the previous, complete file"}


def test_item03_train_full_disk_is_one_line_and_keeps_the_checkpoint(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    resume = ["train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "4", *TRAIN]
    with full_disk("checkpoint.pt", budget=4096):
        code, err = cli(capsys, *resume)
    assert code == 1
    assert err.strip() == (f"train: no space left on device writing {run / 'checkpoint.pt'}; the previous "
                           f"checkpoint.pt is intact")
    assert (run / "checkpoint.pt").read_bytes() == before and not list(run.glob(".*.tmp"))
    code, err = cli(capsys, *resume)  # with space again, the run continues from that checkpoint
    assert code == 0, err


def test_item03_train_on_a_real_full_disk(voc, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "run"
        code, err = cli(capsys, "train", SYNTH, voc, "--out", out, "--max-batches", "2", "--checkpoint-every",
                        "1", *TRAIN)
        assert code == 1
        assert err.strip() == (f"train: no space left on device writing {out / 'checkpoint.pt'}; no "
                               f"checkpoint.pt was written")
        assert not (out / "checkpoint.pt").exists() and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- 4. annotation cache


def _devkit_with_subfolder(tmp_path: Path) -> Path:
    """Ids 000000 and sub/000000: same image, XMLs of the same size and mtime, different boxes."""
    root = make_synthetic_voc(tmp_path / "voc", 1, 0, seed=3)
    base = root / "VOC2007"
    (base / "Annotations" / "sub").mkdir()
    (base / "JPEGImages" / "sub").mkdir()
    shutil.copy(base / "JPEGImages" / "000000.jpg", base / "JPEGImages" / "sub" / "000000.jpg")
    xml = (base / "Annotations" / "000000.xml").read_text()
    assert "<difficult>0</difficult>" in xml
    sub = base / "Annotations" / "sub" / "000000.xml"
    sub.write_text(xml.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    st = (base / "Annotations" / "000000.xml").stat()
    os.utime(sub, ns=(st.st_atime_ns, st.st_mtime_ns))
    (base / "ImageSets" / "Main" / "both.txt").write_text("000000\nsub/000000\n")
    return root


def test_item04_annotation_cache_keys_the_full_relative_path(tmp_path):
    root = _devkit_with_subfolder(tmp_path)
    for _ in range(2):  # the first pass fills the cache, the second reads it
        top, sub = load_voc(root, [("2007", "both")], SYNTH_CLASSES, cache_dir=tmp_path / "cache")
        assert not top.annotation.objects[0].difficult
        assert sub.annotation.objects[0].difficult, "sub/000000 got 000000's boxes"


@pytest.mark.parametrize("tamper", ["width 0", "width text", "empty box", "box outside", "name not text",
                                    "objects not a list", "no annotation"])
def test_item04_cache_entries_are_validated_on_load(tmp_path, tamper):
    root = make_synthetic_voc(tmp_path / "voc", 2, 0, seed=4)
    want = load_voc(root, [("2007", "train")], SYNTH_CLASSES, cache_dir=tmp_path / "cache")
    [cache] = (tmp_path / "cache").iterdir()
    data = json.loads(cache.read_text())
    entry = next(iter(data["entries"].values()))
    a = entry["annotation"]
    if tamper == "width 0":
        a["width"] = 0
    elif tamper == "width text":
        a["width"] = "416"
    elif tamper == "empty box":
        a["objects"][0][1:5] = [50, 50, 10, 10]
    elif tamper == "box outside":
        a["objects"][0][3] = 1e9
    elif tamper == "name not text":
        a["objects"][0][0] = 5
    elif tamper == "objects not a list":
        a["objects"] = {"a": 1}
    else:
        del entry["annotation"]
    cache.write_text(json.dumps(data))
    got = load_voc(root, [("2007", "train")], SYNTH_CLASSES, cache_dir=tmp_path / "cache")
    assert [r.annotation for r in got] == [r.annotation for r in want]  # re-parsed from the XML


# --------------------------------------------------------------------------- 5, 6, 16. images


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (2, 8000), (8000, 2), (3, 2000)])
def test_item05_extreme_aspect_ratios_work(shape):
    im = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = np.array([[0, 0.5, 0.5, 0.5, 0.5]])
    canvas = letterbox_image(im, 416, 416)
    assert canvas.shape == (416, 416, 3) and np.isfinite(canvas).all()
    for kind in ("detection", "region"):
        out, truth = Augmenter(kind, 0.2, 0.1, 1.5, 1.5)(im, labels, 64, 64, np.random.default_rng(1))
        assert out.shape == (64, 64, 3) and np.isfinite(out).all() and np.isfinite(truth).all()
    assert np.isfinite(EvalTransform(True)(im, labels, 64, 64)[0]).all()
    [d] = Detector(Darknet(SYNTH).eval(), thresh=0.005)([im])
    assert np.isfinite(d.boxes).all() and (d.width, d.height) == (shape[1], shape[0])


def test_item05_extreme_aspect_ratios_in_detect_valid_and_train(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", 4, 2, seed=6)
    jpeg = root / "VOC2007" / "JPEGImages"
    for i, (h, w) in zip(("000004", "000005"), ((2, 3000), (3000, 2)), strict=True):
        cv2.imwrite(str(jpeg / f"{i}.jpg"), np.full((h, w, 3), 90, np.uint8))
        xml = root / "VOC2007" / "Annotations" / f"{i}.xml"
        xml.write_text(re.sub(r"<object>.*</object>\n", "", re.sub(
            r"<width>\d+</width>\s*<height>\d+</height>", f"<width>{w}</width><height>{h}</height>",
            xml.read_text()), flags=re.S))
    code, err = cli(capsys, "detect", jpeg / "000004.jpg", jpeg / "000005.jpg", "--cfg", "yolov2-tiny-synth",
                    "--weights", WEIGHTS, "--names", root / "classes.names", "--json", "--device", "cpu")
    assert code == 0, err
    assert cli(capsys, *valid_args(root, tmp_path / "results"))[0] == 0
    (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("000004\n000005\n000000\n000001\n")
    code, err = cli(capsys, "train", SYNTH, root, "--out", tmp_path / "run", "--sets", "2007:test",
                    "--max-batches", "1", *TRAIN)
    assert code == 0, err


def test_item06_pixel_cap_refuses_from_the_header_before_decoding(voc, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(50000, 50000))  # 2.5 gigapixels in 100 bytes
    with mock.patch.object(cv2, "imdecode", side_effect=AssertionError("decoded")):
        with pytest.raises(ImageError, match=r"50000x50000 image \(2,500,000,000 pixels\) is above the limit "
                                              r"of 67,108,864 pixels \(set YOLOV2_MAX_PIXELS") as e:
            read_image(bomb)
    assert str(e.value).startswith(f"{bomb}: ") and str(e.value).endswith("not decoded")
    code, err = cli(capsys, "detect", bomb, "--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS, "--names",
                    voc / "classes.names", "--device", "cpu")
    assert code == 1
    assert_one_clear_line(err, f"yolov2 detect: error: {e.value}")


def test_item06_pixel_cap_is_configurable_and_opencv_errors_name_the_file(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setenv("YOLOV2_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="40x40 image .* above the limit"):
        read_image(small)
    monkeypatch.setenv("YOLOV2_MAX_PIXELS", "2000")
    assert read_image(small).shape == (40, 40, 3)
    monkeypatch.setenv("YOLOV2_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="YOLOV2_MAX_PIXELS='lots': expected a positive whole number"):
        read_image(small)
    monkeypatch.setenv("YOLOV2_MAX_PIXELS", str(1 << 40))  # past the package's cap: OpenCV's own refuses
    ok, jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    big = tmp_path / "big.jpg"
    big.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"big\.jpg: OpenCV cannot decode it \(.*CV_IO_MAX_IMAGE_PIXELS"):
        read_image(big)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tif", ".ppm"])
def test_item06_header_sizes_of_every_format(tmp_path, ext, monkeypatch):
    path = tmp_path / f"x{ext}"
    cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
    monkeypatch.setenv("YOLOV2_MAX_PIXELS", str(37 * 53 - 1))
    with mock.patch.object(cv2, "imdecode", side_effect=AssertionError("decoded")):
        with pytest.raises(ImageError, match="53x37 image"):
            read_image(path)


def _jpeg_with_grey_corner(tmp_path: Path) -> bytes:
    im = cv2.GaussianBlur((np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8), (9, 9), 3)
    im[-24:, -24:] = 128  # the last pixel exactly mid-grey: what a cut JPEG decodes to
    return cv2.imencode(".jpg", im)[1].tobytes()


def test_item16_truncated_jpeg_with_end_marker_is_refused(tmp_path):
    data = _jpeg_with_grey_corner(tmp_path)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # OpenCV only warns and fills the rest grey
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated JPEG \(its image data ends before the last"):
        load_image(cut)
    whole = tmp_path / "whole.jpg"  # a complete image with the same grey corner is no false alarm
    whole.write_bytes(data)
    assert np.array_equal(read_image(whole), cv2.cvtColor(cv2.imread(str(whole)), cv2.COLOR_BGR2RGB))


# --------------------------------------------------------------------------- 7, 8, 14, 15. dataset files


def test_item07_non_utf8_text_files_are_clear_errors(voc, tmp_path, capsys):
    names = tmp_path / "latin1.names"
    names.write_bytes("circle\ncaf\xe9\n".encode("latin-1"))
    what = rf"{re.escape(str(names))}:2: not UTF-8 text \(byte 0xe9 at column 4\)"
    with pytest.raises(DatasetError, match=what):
        read_class_names(names)
    code, err = cli(capsys, *eval_args(voc, tmp_path)[:-2], "--classes", names)
    assert code == 1
    assert_one_clear_line(err, f"{names}:2: not UTF-8 text")
    root = make_synthetic_voc(tmp_path / "voc", 2, 0, seed=1)
    image_set = root / "VOC2007" / "ImageSets" / "Main" / "train.txt"
    image_set.write_bytes(b"000000\n\xff\xfe000001\n")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(image_set))}:2: not UTF-8 text"):
        read_image_set(root, "2007", "train")
    utf16 = tmp_path / "utf16.names"
    utf16.write_text("circle\n", encoding="utf-16")
    with pytest.raises(DatasetError, match="not UTF-8 text|NUL bytes"):
        read_class_names(utf16)
    bom = tmp_path / "bom.names"
    bom.write_bytes("\ufeffcircle\nsquare\n".encode())
    assert read_class_names(bom) == ["circle", "square"]  # a BOM (Windows Notepad) is fine


def test_item07_non_utf8_results_file_names_file_and_line(voc, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli(capsys, *valid_args(voc, results))[0] == 0
    f = sorted(results.iterdir())[0]
    f.write_bytes(f.read_bytes() + b"000008 0.5 1 1 2 2 \xe9\n")
    code, err = cli(capsys, *eval_args(voc, results))
    assert code == 1
    assert_one_clear_line(err, f"{f}:", "not UTF-8 text")


def test_item07_latin1_comment_in_a_cfg_is_accepted_as_darknet_does(tmp_path):
    cfg = tmp_path / "latin1.cfg"
    cfg.write_bytes(b"# caf\xe9 cr\xe8me, \xa9 someone\n" + SYNTH.read_bytes())
    net = Darknet(cfg)
    assert net.summary() == Darknet(SYNTH).summary()
    binary = tmp_path / "weights.cfg"
    shutil.copy(WEIGHTS, binary)
    with pytest.raises(CfgError, match="not a text file"):
        Darknet(binary)


def test_item08_xml_size_must_be_the_image_size(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", 4, 0, seed=2)
    xml = root / "VOC2007" / "Annotations" / "000001.xml"
    w, h = read_image(root / "VOC2007" / "JPEGImages" / "000001.jpg").shape[1::-1]
    xml.write_text(re.sub(r"<width>\d+</width>\s*<height>\d+</height>", "<width>20000</width><height>20000"
                          "</height>", xml.read_text()))
    records = load_voc(root, [("2007", "train")], SYNTH_CLASSES)
    dataset = DetectionDataset(records, SYNTH_CLASSES)
    what = rf"000001\.xml: <size> says 20000x20000, but .*000001\.jpg is {w}x{h}"
    with pytest.raises(DatasetError, match=what):
        dataset.load(1, 64)
    for workers in ("0", "1"):  # a DataLoader worker's error arrives as one line too
        train = ["train", SYNTH, root, "--out", tmp_path / f"run{workers}", "--max-batches", "2", *TRAIN]
        train[train.index("--workers") + 1] = workers
        code, err = cli(capsys, *train)
        assert code == 1
        assert err.strip().startswith(f"train: {xml}: <size> says 20000x20000")
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "/etc/passwd", "a/../000000", "./000000",
                                      "a//000000"])
def test_item14_image_ids_that_leave_the_devkit_are_refused(tmp_path, capsys, image_id):
    root = make_synthetic_voc(tmp_path / "voc", 1, 1, seed=1)
    image_set = root / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    image_set.write_text(f"000001\n{image_id}\n")
    with pytest.raises(DatasetError, match=r"test\.txt:2: image id .* leaves the devkit's folders"):
        read_image_set(root, "2007", "test")
    for args in (valid_args(root, tmp_path / "results"), eval_args(root, tmp_path)):
        code, err = cli(capsys, *args)
        assert code == 1
        assert_one_clear_line(err, f"{image_set}:2: image id")


def test_item14_subfolder_ids_agree_between_valid_and_eval(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", 1, 2, seed=1)
    base = root / "VOC2007"
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "xml")):
        (base / kind / "sub").mkdir()
        shutil.move(base / kind / f"000001.{ext}", base / kind / "sub" / f"000001.{ext}")
    (base / "ImageSets" / "Main" / "test.txt").write_text("sub/000001\n000002\n")
    results = tmp_path / "results"
    assert cli(capsys, *valid_args(root, results))[0] == 0
    ids = {line.split()[0] for f in results.iterdir() for line in f.read_text().splitlines()}
    assert "sub/000001" in ids and "000001" not in ids
    code, err = cli(capsys, *eval_args(root, results))
    assert code == 0, err


def test_item15_eval_json_is_not_overwritten_without_force(voc, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli(capsys, *valid_args(voc, results))[0] == 0
    mine = tmp_path / "map.json"
    mine.write_text("the user's")
    code, err = cli(capsys, *eval_args(voc, results), "--json", mine)
    assert code == 1
    assert_one_clear_line(err, f"{mine}: exists (use --force to overwrite)")
    assert mine.read_text() == "the user's"
    assert cli(capsys, *eval_args(voc, results), "--json", mine, "--force")[0] == 0
    assert set(json.loads(mine.read_text())) == {"ap", "map"}


# --------------------------------------------------------------------------- 9, 10, 11. cfg values


@pytest.mark.parametrize(("old", "new", "section", "key", "what"), [
    ("width=416", "width=400", "net", "width", "width=400 is not a multiple of 32, the network's stride"),
    ("pad=1", "padding=100000", "convolutional", "padding", "padding=100000 is above 64"),
    ("filters=8", "filters=1000000000", "convolutional", "filters", "makes 27,000,000,000 weights; at most"),
    ("size=3", "size=100001", "convolutional", "size", "size=100001 is above 64"),
    ("width=416", "width=1000000000", "net", "width", "width=1000000000 is above 8192"),
    ("channels=3", "channels=1", "net", "channels", "only channels=3 is supported"),
])
def test_item09_cfg_values_are_clear_errors_naming_file_line_and_key(voc, tmp_path, capsys, old, new, section,
                                                                     key, what):
    cfg = tmp_path / "bad.cfg"
    text = SYNTH.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    line = text[:text.index(old)].rfind(f"[{section}]")
    line = text[:line].count("\n") + 1
    where = f"{cfg}: [{section}] at line {line}, key '{key}'"
    with pytest.raises(CfgError) as e:
        Darknet(cfg)
    assert str(e.value).startswith(where) and what in str(e.value)
    image = voc / "VOC2007" / "JPEGImages" / "000008.jpg"
    code, err = cli(capsys, "detect", image, "--cfg", cfg, "--weights", WEIGHTS, "--json")
    assert code == 1 and err.strip() == f"yolov2 detect: error: {e.value}"


def test_item10_a_huge_maxpool_is_refused_not_run(tmp_path):
    cfg = tmp_path / "pool.cfg"
    text = SYNTH.read_text()
    cfg.write_text(text.replace("[maxpool]\nsize=2", "[maxpool]\nsize=1000", 1))
    t = time.perf_counter()
    what = r"pool\.cfg: \[maxpool\] at line 42, key 'size': size=1000 is above 64"
    with pytest.raises(CfgError, match=what):
        Darknet(cfg)
    assert time.perf_counter() - t < 30  # no million-tap loop


@pytest.mark.parametrize(("edit", "key", "what"), [
    ("coords=4", "coords", "coords=5; YOLOv2's region layer has 4"),
    ("anchors", "anchors", "expected finite numbers, got 'nan,1.09"),
    ("anchors inf", "anchors", "expected finite numbers, got 'inf,1.09"),
    ("anchors negative", "anchors", "anchor sizes must be positive, got -1"),
    ("anchors zero", "anchors", "anchor sizes must be positive, got 0"),
    ("thresh", "thresh", "expected a finite number, got 'nan'"),
])
def test_item11_region_values_darknet_would_misuse_are_refused(tmp_path, edit, key, what):
    text = SYNTH.read_text()
    anchors = "anchors = 1.00,1.09,"
    bad = {"coords=4": text.replace("coords=4", "coords=5"),
           "anchors": text.replace(anchors, "anchors = nan,1.09,"),
           "anchors inf": text.replace(anchors, "anchors = inf,1.09,"),
           "anchors negative": text.replace(anchors, "anchors = -1,1.09,"),
           "anchors zero": text.replace(anchors, "anchors = 0,1.09,"),
           "thresh": text.replace("thresh = .6", "thresh = nan")}[edit]
    assert bad != text
    cfg = tmp_path / "region.cfg"
    cfg.write_text(bad)
    with pytest.raises(CfgError, match=rf"region\.cfg: \[region\] at line 131, key '{key}': "
                                       rf".*{re.escape(what)}"):
        Darknet(cfg)


def test_item11_detect_json_is_strict_json():
    d = Detections(np.array([[10, 10, np.inf, np.nan]], np.float32), np.ones(1, np.float32),
                   np.array([[0.9, 0]], np.float32), np.zeros(1, np.int64), 100, 100)
    text = detections_to_json(["x.jpg"], [d], ["a", "b"])
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert doc[0]["detections"][0]["box"][2:] == [None, None]


# --------------------------------------------------------------------------- 12, 13. checkpoints, resume


def _tamper(ckpt: dict, how: str) -> None:
    if how == "progress key missing":
        del ckpt["progress"]["n_images"]
    elif how == "negative seen":
        ckpt["seen"] = -5
    elif how == "seen as text":
        ckpt["seen"] = "12"
    elif how == "fractional step":
        ckpt["step"] = 1.5
    elif how == "progress not a dict":
        ckpt["progress"] = [1, 2]
    elif how == "momentum shape":
        ckpt["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)
    elif how == "param groups":
        ckpt["optimizer"]["param_groups"][0]["params"] = [0]
    elif how == "numpy rng":
        ckpt["rng"]["numpy"][1] = torch.zeros(3, dtype=torch.int64)
    elif how == "torch rng":
        ckpt["rng"]["torch"] = torch.zeros(5, dtype=torch.uint8)
    elif how == "settings key":
        ckpt["settings"]["bogus"] = 1
    elif how == "settings batch":
        ckpt["settings"]["batch"] = 0
    elif how == "schedule":
        ckpt["progress"]["schedule"] = {"policy": 5}
    elif how == "data position":
        ckpt["progress"]["batch_in_epoch"] = 10**6
    elif how == "scaler":
        ckpt["scaler"] = {"scale": "big"}
    elif how == "model shape":
        key = next(k for k in ckpt["model"] if k.endswith("conv.weight"))
        ckpt["model"][key] = ckpt["model"][key][:1]


@pytest.mark.parametrize("how", ["progress key missing", "negative seen", "seen as text", "fractional step",
                                 "progress not a dict", "momentum shape", "param groups", "numpy rng",
                                 "torch rng", "settings key", "settings batch", "schedule", "data position",
                                 "scaler", "model shape"])
def test_item12_tampered_checkpoints_are_clear_errors(voc, trained_run, tmp_path, capsys, how):
    run = copy_run(trained_run, tmp_path)
    path = run / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    _tamper(ckpt, how)
    torch.save(ckpt, path)
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", *TRAIN)
    assert code == 1
    assert_one_clear_line(err, f"train: {path}: ")
    assert len(err.strip().splitlines()) == 1


def test_item13_resume_trains_further_with_a_longer_max_batches(voc, tmp_path, capsys):
    args = ["train", SYNTH, voc, "--final-batches", "0", *TRAIN]
    assert cli(capsys, *args, "--out", tmp_path / "whole", "--max-batches", "4")[0] == 0
    assert cli(capsys, *args, "--out", tmp_path / "parts", "--max-batches", "2")[0] == 0
    code, err = cli(capsys, *args, "--out", tmp_path / "parts", "--max-batches", "4", "--resume")
    assert code == 0, err
    a, b = ((tmp_path / r / "yolov2-tiny-synth_final.weights").read_bytes() for r in ("whole", "parts"))
    assert a == b  # a run trained further equals one that had the longer max_batches from the start
    assert json.loads((tmp_path / "parts" / "run.json").read_text())["max_batches"] == 4


@pytest.mark.parametrize(("extra", "message"), [
    ([], "the run is at batch 2 and max_batches is 2: nothing left to train; pass --max-batches N with "
         "N > 2"),
    (["--max-batches", "1"], "the run is at batch 2 and max_batches is 1"),
    (["--max-batches", "3", "--seed", "9"], "--seed 9 differs from the run's 0"),
    (["--max-batches", "3", "--lr", "0.5"], "--lr 0.5 differs from the run's"),
    (["--max-batches", "3", "--sizes", "96"], "--sizes [96] differs from the run's [64]"),
    (["--max-batches", "3", "--recipe", "adam"], "--recipe adam differs from the run's darknet"),
])
def test_item13_resume_refuses_options_it_cannot_honour_by_name(voc, trained_run, tmp_path, capsys, extra,
                                                                message):
    run = copy_run(trained_run, tmp_path)
    before = files_of(run)
    args = ["train", SYNTH, voc, "--out", run, "--resume", *TRAIN]
    args[args.index("--sizes"):args.index("--sizes") + 2] = []
    if "--sizes" not in extra:
        args += ["--sizes", "64"]
    code, err = cli(capsys, *args, *extra)
    assert code == 1
    assert_one_clear_line(err, f"train: {run / 'checkpoint.pt'}: ", message)
    assert files_of(run) == before


def test_item13_weights_past_max_batches_are_not_a_silent_no_op(voc, tmp_path, capsys):
    trained = tmp_path / "trained.weights"  # the demo model: its header has seen 24000 images
    shutil.copy(WEIGHTS, trained)
    args = ["train", SYNTH, voc, "--out", tmp_path / "run", "--weights", trained, "--max-batches", "2",
            *TRAIN]
    code, err = cli(capsys, *args)
    assert code == 1  # darknet would write the loaded weights back as "trained", 0 images/s
    assert_one_clear_line(err, f"train: {trained}: its header has seen images up to batch 6000, past "
                               f"max_batches 2: nothing to train; pass --clear")
    code, err = cli(capsys, *args, "--clear")
    assert code == 0, err


def test_item13_resume_accepts_the_same_options_again(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", "--seed",
                    "0", "--checkpoint-every", "1", *TRAIN)
    assert code == 0, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["settings"]["checkpoint_every"] == 1


# --------------------------------------------------------------------------- 17. thresholds and numbers


@pytest.mark.parametrize("command", ["detect", "valid"])
@pytest.mark.parametrize("flag, value", [("--thresh", "nan"), ("--nms", "nan"), ("--thresh", "inf"),
                                         ("--thresh", "-0.1"), ("--thresh", "1.5"), ("--nms", "2")])
def test_item17_non_finite_and_out_of_range_thresholds_are_refused(voc, tmp_path, capsys, command, flag,
                                                                    value):
    image = voc / "VOC2007" / "JPEGImages" / "000008.jpg"
    detect = ["detect", image, "--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS, "--names",
              voc / "classes.names"]
    args = detect if command == "detect" else valid_args(voc, tmp_path / "r")
    code, err = cli(capsys, *args, flag, value)
    assert code == 2 and f"argument {flag}: expected a number from 0 to 1, got '{value}'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "-1"), ("--max-batches", "0"),
                                         ("--batch", "-4"), ("--checkpoint-every", "0"), ("--workers", "-1")])
def test_item17_train_numbers_are_checked(voc, tmp_path, capsys, flag, value):
    code, err = cli(capsys, "train", SYNTH, voc, "--out", tmp_path / "run", flag, value)
    assert code == 2 and f"argument {flag}: expected" in err and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 18. leftovers


def test_item18_stale_temporary_files_are_removed(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    pid = dead_pid()
    stale = [run / f".checkpoint.pt.{pid}.tmp", run / f".yolov2-tiny-synth_last.weights.{pid}.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    live = run / f".log.csv.{os.getppid()}.tmp"  # a running process's (pytest's parent): kept
    live.write_bytes(b"being written")
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", *TRAIN)
    assert code == 0, err
    assert not any(f.exists() for f in stale) and live.exists()


def test_item18_a_corrupt_log_is_named_with_its_line(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    log = run / "log.csv"
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[6], "abc", 1)
    log.write_text("\n".join(lines) + "\n")
    before = files_of(run)
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", *TRAIN)
    assert code == 1
    assert_one_clear_line(err, f"train: {log}:2: not a number", "the checkpoint is intact")
    assert files_of(run) == before


def test_item18_ctrl_c_during_a_checkpoint_write_stays_ctrl_c(voc, trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    with full_disk("checkpoint.pt", budget=4096, error=KeyboardInterrupt()):  # torch wraps it (RuntimeError)
        code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "4", *TRAIN)
    assert code == 130 and "Traceback" not in err and err.startswith("train: interrupted"), err
    assert (run / "checkpoint.pt").read_bytes() == before and not list(run.glob(".*.tmp"))


def test_item18_ctrl_c_says_where_and_exits_130(voc, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "yolov2", "train", str(SYNTH), str(voc), "--out", str(out), "--max-batches",
           "500", "--checkpoint-every", "2", *TRAIN]
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while time.monotonic() < end and p.poll() is None and not (
            (out / "checkpoint.pt").exists() and len((out / "log.csv").read_text().splitlines()) > 3):
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    want = r"train: interrupted at batch \d+; continue with --resume \(from the last checkpoint, "
    assert re.fullmatch(want + re.escape(str(out / "checkpoint.pt")) + r"\)", err.strip()), err
    at = int(re.search(r"batch (\d+)", err).group(1))
    code = yolov2_main(["train", str(SYNTH), str(voc), "--out", str(out), "--resume", "--max-batches",
                        str(at + 2), *TRAIN])
    assert code == 0


# --------------------------------------------------------------------------- the README's promises


def test_also_the_readme_states_what_the_code_does():
    from yolov2.darknet import layers, model
    from yolov2.data import image

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## What the package promises"):]
    assert f"{image.MAX_PIXELS:,} pixels" in table and "YOLOV2_MAX_PIXELS" in table
    assert f"≤ {model.MAX_INPUT}" in table and f"≤ {layers.MAX_KERNEL}" in table
    for words in ("run.json", "--force", "--resume", "--max-batches", "--checkpoint-every", "atomic", "UTF-8",
                  "130"):
        assert words in table, words
