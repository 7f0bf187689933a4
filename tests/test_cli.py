"""One CLI vocabulary: `--version`, `cfgs`, help with defaults and an example for every command, the
older spellings as aliases, the class list found the same way by every command, `--json FILE`, progress
over folders, train's start banner and its list of files written."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import yolov2
from yolov2.__main__ import COMMANDS
from yolov2.__main__ import main as cli
from yolov2.darknet.cfg import shipped_cfgs
from yolov2.data.synth import make_synthetic_voc
from yolov2.detect.evaluate import build_parser as eval_parser
from yolov2.train.command import build_parser as train_parser

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = str(ROOT / "data" / "yolov2-tiny-synth.weights")
MODEL = ["--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("cli") / "synth", 12, 6, seed=2)


def test_version():
    r = subprocess.run([sys.executable, "-m", "yolov2", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"yolov2 {yolov2.__version__}"


def test_cfgs_lists_the_shipped_cfgs_and_an_unknown_name_too():
    rc, out, _ = run(["cfgs"])
    assert rc == 0 and [line.split()[0] for line in out.splitlines()] == shipped_cfgs()
    assert {"yolov2-tiny-synth", "yolov2-tiny-voc", "yolov2-voc"} <= set(shipped_cfgs())
    rc, _, err = run(["detect", "--cfg", "yolov2-nothing", "--weights", WEIGHTS, str(ROOT / "README.md")])
    assert rc == 1 and all(name in err for name in shipped_cfgs())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_defaults_and_an_example(command):
    rc, out, _ = run([command, "--help"])
    assert rc == 0
    assert "example:\n  python -m yolov2" in out
    if command not in ("cfgs", "labels", "export"):
        assert "(default" in out


def test_top_level_help_lists_every_command_with_examples():
    rc, out, _ = run(["--help"])
    assert rc == 0 and all(f"  {c} " in out for c in COMMANDS) and "examples:" in out


def test_old_spellings_are_aliases():
    new = eval_parser().parse_args(["--data", "D", "--names", "N", "--results", "R"])
    old = eval_parser().parse_args(["--voc-root", "D", "--classes", "N", "--results", "R"])
    assert vars(new) == vars(old)
    a = train_parser().parse_args(["--cfg", "C", "--data", "D", "--out", "O", "--classes", "N"])
    b = train_parser().parse_args(["C", "D", "--out", "O", "--names", "N"])
    assert (a.cfg, a.data, a.names) == ("C", "D", "N") and (b.cfg_arg, b.data_arg, b.names) == ("C", "D", "N")
    rc, _, err = run(["train", "C", "--cfg", "C", "--data", "D", "--out", "O"])
    assert rc == 2 and "given twice" in err


def test_valid_and_eval_take_the_devkits_class_list(devkit, tmp_path):
    """The issue's failure: on the synthetic devkit valid and eval defaulted to VOC's 20 classes."""
    rc, _, err = run(["valid", *MODEL, "--data", str(devkit), "--out", str(tmp_path / "r")])
    assert rc == 0, err
    assert sorted(f.name for f in (tmp_path / "r").iterdir()) == sorted(
        f"comp4_det_test_{c}.txt" for c in (devkit / "classes.names").read_text().split())
    rc, out, err = run(["eval", "--data", str(devkit), "--results", str(tmp_path / "r"),
                        "--json", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    assert rc == 0, err
    assert set(json.loads((tmp_path / "m.json").read_text())["ap"]) == set((devkit / "classes.names")
                                                                          .read_text().split())
    for name in ("ap.png", "pr_curves.png"):
        image = cv2.imread(str(tmp_path / "plots" / name))
        assert image.shape[1] == 700  # the book's column: 7 in at 100 dpi
    rc, _, err = run(["eval", "--data", str(devkit), "--results", str(tmp_path / "r"),
                      "--plots", str(tmp_path / "plots")])
    assert rc == 1 and "ap.png: exists (use --force to overwrite)" in err


def test_detect_json_file_and_progress_over_a_folder(devkit, tmp_path):
    folder = devkit / "VOC2007" / "JPEGImages"
    out = tmp_path / "d.json"
    rc, stdout, err = run(["detect", *MODEL, str(folder), "--json", str(out), "--batch", "4"])
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert len(doc) == 18 and f"-> {out}" in stdout
    assert "detect" in err and "18/18" in err  # the progress bar over 5 batches
    rc, _, err = run(["detect", *MODEL, str(folder), "--json", str(out)])
    assert rc == 1 and "d.json: exists (use --force to overwrite)" in err
    rc, stdout, _ = run(["detect", *MODEL, str(folder / "000000.jpg"), "--json"])
    assert rc == 0 and json.loads(stdout)[0]["image"].endswith("000000.jpg")  # --json alone prints


def test_anchors_plot(devkit, tmp_path):
    rc, out, err = run(["anchors", "--data", str(devkit), "--curve", "--plot", str(tmp_path / "a.png")])
    assert rc == 0, err
    assert cv2.imread(str(tmp_path / "a.png")).shape[1] == 700
    rc, _, err = run(["anchors", "--data", str(devkit), "--plot", str(tmp_path / "b.png")])
    assert rc == 2 and "--plot draws the --curve" in err


def test_train_banner_final_size_rule_and_files_written(devkit, tmp_path):
    rc, out, err = run(["train", "--cfg", "yolov2-tiny-synth", "--data", str(devkit), "--out",
                        str(tmp_path / "run"), "--max-batches", "3", "--batch", "4", "--sizes", "64,96",
                        "--final-batches", "1", "--device", "cpu", "--workers", "0", "--no-progress",
                        "--eval", "2007:test"])
    assert rc == 0, err
    assert "training yolov2-tiny-synth: 16 layers" in out and "5 classes (circle" in out
    assert f"data: {devkit}: 12 images" in out and "device: cpu (1 rank), float32" in out
    assert "darknet's final-size rule: the last 1 batches (after batch 2) run at the largest size, 96" in out
    written = out.split("files written: ", 1)[1].split(", ")
    names = {Path(f.strip()).name for f in written}
    assert {"checkpoint.pt", "loss.png", "eval.json", "log.csv", "yolov2-tiny-synth_final.weights"} <= names
