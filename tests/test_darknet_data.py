"""Darknet-format datasets: `.data` files, image lists and YOLO label files (`yolov2.data.darknet_data`),
the `labels` command (voc_label.py's behaviour), and train/valid/eval/anchors on a `.data` file built
from a `synth` devkit giving what they give on the devkit itself."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest

from yolov2.__main__ import main as cli
from yolov2.data.darknet_data import (
    annotations_from_records,
    dataset_names,
    load_split,
    read_data_file,
    resolve,
)
from yolov2.data.labels import darknet_label_rows, label_path, read_yolo_labels
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.data.voc import DatasetError, load_voc

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = str(ROOT / "data" / "yolov2-tiny-synth.weights")


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    root = make_synthetic_voc(tmp_path_factory.mktemp("dd") / "synth", 16, 8, seed=5)
    rc, out, err = run(["labels", str(root)])
    assert rc == 0, err
    return root


def test_labels_writes_voc_label_files_and_lists(devkit):
    data = read_data_file(devkit / "voc.data")
    assert data.classes == len(SYNTH_CLASSES) and data.names == devkit / "voc.names"
    assert data.train == devkit / "train.txt" and data.valid == devkit / "2007_test.txt"
    for year, image_set in (("2007", "train"), ("2007", "test")):
        records = load_voc(devkit, [(year, image_set)], SYNTH_CLASSES)
        listed = (devkit / f"{year}_{image_set}.txt").read_text().splitlines()
        assert listed == [r.image_path for r in records] and all(Path(p).is_absolute() for p in listed)
        for r in records:  # voc_label.py's rows: non-difficult objects, the -1 shift, normalised
            np.testing.assert_array_equal(read_yolo_labels(label_path(r.image_path)),
                                          darknet_label_rows(r.annotation, SYNTH_CLASSES))
    assert (devkit / "train.txt").read_text() == (devkit / "2007_train.txt").read_text()  # 07 train+val
    rc, _, err = run(["labels", str(devkit)])
    assert rc == 1 and "exists (use --force to overwrite)" in err
    assert run(["labels", str(devkit), "--force"])[0] == 0


def test_label_path_is_darknets():
    assert label_path("/d/VOC2007/JPEGImages/x.jpg") == Path("/d/VOC2007/labels/x.txt")
    assert label_path("data/images/train/a.png") == Path("data/labels/train/a.txt")


def test_data_file_parsing_and_errors(tmp_path):
    f = tmp_path / "x.data"
    f.write_text("# darknet\nclasses = 3\ntrain = list.txt\n\nnames=n.names\nbackup = backup/\n")
    d = read_data_file(f)
    assert (d.classes, d.train, d.valid, d.names) == (3, tmp_path / "list.txt", None, tmp_path / "n.names")
    with pytest.raises(DatasetError, match="no valid= image list"):
        d.image_list("valid")
    (tmp_path / "n.names").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="classes=3, but .*n.names lists 2 names"):
        d.class_names()
    for text, message in (("classes = 2\ntrain\n", r"x.data:2: expected 'key = value'"),
                          ("classes = two\ntrain = a\n", "classes=two is not a positive integer"),
                          ("classes = 2\nnames = a\n", "neither train= nor valid=")):
        f.write_text(text)
        with pytest.raises(DatasetError, match=message):
            read_data_file(f)


def test_relative_paths_as_darknet_then_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    named_in = tmp_path / "sub" / "x.data"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_text("")
    assert resolve("here.txt", named_in) == Path("here.txt")  # from the current folder, as darknet
    assert resolve("there.txt", named_in) == tmp_path / "sub" / "there.txt"  # else beside the file


def test_a_list_naming_a_missing_image_or_bad_label_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "labels" / "a.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    (tmp_path / "list.txt").write_text("images/a.jpg\nimages/b.jpg\n")
    (tmp_path / "x.data").write_text("classes = 2\ntrain = list.txt\n")
    with pytest.raises(DatasetError, match=r"list.txt:2: missing image .*b.jpg"):
        load_split(tmp_path / "x.data")
    (tmp_path / "list.txt").write_text("images/a.jpg\n")
    with pytest.raises(DatasetError, match=r"labels/a.txt:1: bad class id '7'"):
        load_split(tmp_path / "x.data")


def test_annotations_from_labels_give_back_the_voc_corners(devkit):
    records = load_split(devkit / "voc.data", "valid")
    annotations = annotations_from_records(records, SYNTH_CLASSES)
    voc = {r.image_id: r.annotation for r in load_voc(devkit, [("2007", "test")], SYNTH_CLASSES)}
    assert list(annotations) == list(voc)
    for i, ann in annotations.items():
        truth = [o for o in voc[i].objects if not o.difficult]
        assert (ann.width, ann.height) == (voc[i].width, voc[i].height)
        assert [o.name for o in ann.objects] == [o.name for o in truth]
        for a, b in zip(ann.objects, truth, strict=True):
            assert max(abs(a.xmin - b.xmin), abs(a.ymin - b.ymin), abs(a.xmax - b.xmax),
                       abs(a.ymax - b.ymax)) < 1e-9


def test_names_found_the_same_way(devkit, tmp_path):
    assert dataset_names(devkit) == (str(devkit / "classes.names"), list(SYNTH_CLASSES))
    assert dataset_names(devkit / "voc.data") == (str(devkit / "voc.names"), list(SYNTH_CLASSES))
    assert dataset_names(tmp_path)[1] is None


def test_anchors_valid_eval_on_the_data_file_equal_the_devkits(devkit, tmp_path):
    rc, on_devkit, _ = run(["anchors", "--data", str(devkit), "--sets", "2007/train"])
    rc2, on_data, _ = run(["anchors", "--data", str(devkit / "voc.data")])
    assert rc == rc2 == 0 and on_devkit.splitlines()[1:] == on_data.splitlines()[1:]
    model = ["--cfg", "yolov2-tiny-synth", "--weights", WEIGHTS]
    assert run(["valid", *model, "--data", str(devkit), "--out", str(tmp_path / "a")])[0] == 0
    assert run(["valid", *model, "--data", str(devkit / "voc.data"), "--out", str(tmp_path / "b")])[0] == 0
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_text() == (tmp_path / "b" / f.name).read_text()
    difficult = [o for r in load_voc(devkit, [("2007", "test")], SYNTH_CLASSES) for o in r.annotation.objects
                 if o.difficult]
    rc, by_xml, _ = run(["eval", "--data", str(devkit), "--results", str(tmp_path / "a")])
    rc2, by_labels, _ = run(["eval", "--data", str(devkit / "voc.data"), "--results", str(tmp_path / "b")])
    assert rc == rc2 == 0
    if not difficult:  # label files drop difficult objects: the same truth only without them
        assert by_xml == by_labels
    assert by_labels.splitlines()[-1].startswith("mAP")


def test_train_on_the_data_file(devkit, tmp_path):
    rc, out, err = run(["train", "--cfg", "yolov2-tiny-synth", "--data", str(devkit / "voc.data"),
                        "--out", str(tmp_path / "run"), "--max-batches", "2", "--batch", "4", "--sizes", "96",
                        "--device", "cpu", "--workers", "0", "--no-progress", "--eval", "2007:test"])
    assert rc == 0, err
    assert f"data: {devkit / 'voc.data'}: 16 images" in out
    assert "mAP (VOC07)" in out and (tmp_path / "run" / "eval.json").is_file()


def test_relative_lists_work_from_another_folder(devkit, tmp_path, monkeypatch):
    lines = (devkit / "2007_test.txt").read_text().splitlines()
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "test.txt").write_text("".join(os.path.relpath(p, rel) + "\n" for p in lines))
    (rel / "r.data").write_text(f"classes = 5\nvalid = test.txt\nnames = {devkit / 'voc.names'}\n")
    monkeypatch.chdir(tmp_path)  # neither the list's folder nor the devkit's
    assert [r.image_path for r in load_split(rel / "r.data", "valid")] == \
        [str(rel / os.path.relpath(p, rel)) for p in lines]
