"""voc.py (VOC reader) and labels.py (YOLO text labels, class lists), on small devkits made in tmp_path."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from yolov2.data import labels, voc
from yolov2.data.voc import DatasetError

OBJ = "<object><name>{name}</name>{extra}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"  # noqa: E501


def xml_text(w=353, h=500, objects=(), filename="x.jpg") -> str:
    objs = "".join(OBJ.format(extra="", **o) if "extra" not in o else OBJ.format(**o) for o in objects)
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"  # noqa: E501


def obj(name="dog", x0=48, y0=240, x1=195, y1=371, difficult=None, truncated=None) -> dict:
    extra = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    extra += "" if truncated is None else f"<truncated>{truncated}</truncated>"
    return dict(name=name, x0=x0, y0=y0, x1=x1, y1=y1, extra=extra)


def make_devkit(
    root: Path, year: str, images: dict[str, str], image_set: str = "trainval", jpeg=True
) -> None:
    """Write VOC{year} with the given id -> XML text, a tiny JPEG per id and ImageSets/Main/{set}.txt."""
    base = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, text in images.items():
        (base / "Annotations" / f"{image_id}.xml").write_text(text)
        if jpeg:
            (base / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"\xff\xd8 not decoded by the reader")
    (base / "ImageSets/Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))


def write(tmp_path: Path, text: str, name="a.xml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_parse_annotation_fields(tmp_path):
    p = write(
        tmp_path, xml_text(objects=[obj(), obj("person", 8, 12.5, "352", 498, difficult=1, truncated=1)])
    )
    ann = voc.parse_annotation(p)
    assert (ann.filename, ann.width, ann.height, ann.path) == ("x.jpg", 353, 500, str(p))
    assert ann.objects == [
        voc.VOCObject("dog", 48, 240, 195, 371, False, False),  # missing flags mean 0
        voc.VOCObject("person", 8, 12.5, 352, 498, True, True),  # float coordinates kept as is
    ]


@pytest.mark.parametrize(
    "x0, y0, x1, y1",
    [(1, 1, 353, 500), (0, 0, 353, 500), (1, 1, 354, 501)],  # VOC 1-based, 0-based, 1-based exclusive
)
def test_boxes_touching_the_border_are_valid(tmp_path, x0, y0, x1, y1):
    ann = voc.parse_annotation(write(tmp_path, xml_text(objects=[obj(x0=x0, y0=y0, x1=x1, y1=y1)])))
    assert (ann.objects[0].xmax, ann.objects[0].ymax) == (x1, y1)


def test_image_without_objects_is_valid(tmp_path):
    ann = voc.parse_annotation(write(tmp_path, xml_text(objects=[])))
    assert ann.objects == []
    assert labels.darknet_label_rows(ann, voc.VOC_CLASSES).shape == (0, 5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><size>", "malformed XML"),
        ("<annotation><filename>a.jpg</filename></annotation>", "missing <size>"),
        (xml_text().replace("<width>353</width>", ""), "missing <width>"),
        (xml_text(w=0), "bad image size"),
        (xml_text(w="abc"), "not a number"),
        (xml_text(objects=[obj(), obj().copy() | {"name": ""}]), "object 1: missing <name>"),
        (xml_text(objects=[obj(), obj(x0=195)]), "object 1 (dog): empty box"),
        (xml_text(objects=[obj(y0=371, y1=300)]), "object 0 (dog): empty box"),
        (xml_text(objects=[obj(x1="12a")]), "object 0 (dog): <xmax> is not a number"),
        (xml_text(objects=[obj(x1="nan")]), "<xmax> is not finite"),
        (xml_text(objects=[obj(x0=-1)]), "outside the 353x500 image"),
        (xml_text(objects=[obj(x1=355)]), "outside the 353x500 image"),
        (xml_text(objects=[obj(y1=502)]), "outside the 353x500 image"),
        (xml_text(objects=[obj(difficult="yes")]), "<difficult> is not a number"),
        (
            xml_text(objects=[obj()]).replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"),
            "missing <bndbox>",
        ),
    ],
)
def test_bad_annotations_name_file_and_problem(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(DatasetError, match=re.escape(message)) as e:
        voc.parse_annotation(p)
    assert str(p) in str(e.value)


def test_entity_expansion_is_refused(tmp_path):
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxx">]><annotation>&x;</annotation>'
    with pytest.raises(DatasetError, match="malformed XML"):
        voc.parse_annotation(write(tmp_path, bomb))


def test_load_voc_composes_07_and_12(tmp_path):
    make_devkit(tmp_path, "2007", {"000005": xml_text(objects=[obj("chair")]), "000007": xml_text()})
    make_devkit(tmp_path, "2012", {"2008_000002": xml_text(objects=[obj("tvmonitor"), obj("person")])})
    make_devkit(tmp_path, "2007", {"000001": xml_text(objects=[obj()])}, image_set="test")
    records = voc.load_voc(tmp_path, cache=False)
    assert [r.image_id for r in records] == ["000005", "000007", "2008_000002"]
    assert records[2].image_path == str(tmp_path / "VOC2012" / "JPEGImages" / "2008_000002.jpg")
    assert [o.name for o in records[2].annotation.objects] == ["tvmonitor", "person"]
    test = voc.load_voc(tmp_path, voc.TEST_SETS, cache=False)
    assert [r.image_id for r in test] == ["000001"]


def test_missing_image_is_an_error_or_a_logged_skip(tmp_path, caplog):
    make_devkit(tmp_path, "2007", {"000001": xml_text(), "000002": xml_text()})
    (tmp_path / "VOC2007/JPEGImages/000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"000002\.jpg: missing image"):
        voc.load_voc(tmp_path, [("2007", "trainval")], cache=False)
    with caplog.at_level(logging.WARNING):
        records = voc.load_voc(tmp_path, [("2007", "trainval")], skip_bad=True, cache=False)
    assert [r.image_id for r in records] == ["000001"]
    assert "skipped 1 bad images" in caplog.text and "000002.jpg" in caplog.text
    assert len(voc.load_voc(tmp_path, [("2007", "trainval")], cache=False, require_images=False)) == 2


def test_bad_annotation_in_a_set_is_an_error_or_a_logged_skip(tmp_path, caplog):
    make_devkit(tmp_path, "2007", {"000001": xml_text(objects=[obj(x0=300)]), "000002": xml_text()})
    with pytest.raises(DatasetError, match=r"000001\.xml: object 0 \(dog\): empty box"):
        voc.load_voc(tmp_path, [("2007", "trainval")], cache=False)
    with caplog.at_level(logging.WARNING):
        assert len(voc.load_voc(tmp_path, [("2007", "trainval")], skip_bad=True, cache=False)) == 1
    assert "skipped 1 bad images" in caplog.text


def test_missing_annotation_and_image_set(tmp_path):
    make_devkit(tmp_path, "2007", {"000001": xml_text()})
    (tmp_path / "VOC2007/Annotations/000001.xml").unlink()
    with pytest.raises(DatasetError, match=r"000001\.xml: missing annotation"):
        voc.load_voc(tmp_path, [("2007", "trainval")], cache=False)
    with pytest.raises(DatasetError, match=r"ImageSets/Main/val\.txt: cannot read image set"):
        voc.load_voc(tmp_path, [("2007", "val")], cache=False)


def test_unknown_class_name(tmp_path):
    make_devkit(tmp_path, "2007", {"000001": xml_text(objects=[obj("dog"), obj("unicorn")])})
    with pytest.raises(DatasetError, match=r"000001\.xml: object 1: unknown class name 'unicorn'"):
        voc.load_voc(tmp_path, [("2007", "trainval")], cache=False)
    with pytest.raises(DatasetError, match="unknown class name 'dog'"):
        voc.load_voc(tmp_path, [("2007", "trainval")], classes=["cat", "unicorn"], cache=False)
    # voc_label.py's policy, on request: train on a subset, other classes dropped
    (r,) = voc.load_voc(tmp_path, [("2007", "trainval")], classes=["dog"], ignore_unknown=True, cache=False)
    assert [o.name for o in r.annotation.objects] == ["dog"]


class CountingParser:
    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        real = voc.parse_annotation
        monkeypatch.setattr(voc, "parse_annotation", lambda p: self.calls.append(Path(p).stem) or real(p))


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root, cache = tmp_path / "devkit", tmp_path / "cache"
    make_devkit(root, "2007", {f"{i:06d}": xml_text(objects=[obj()]) for i in range(4)})
    parser = CountingParser(monkeypatch)
    first = voc.load_voc(root, [("2007", "trainval")], cache_dir=cache)
    assert len(parser.calls) == 4 and len(list(cache.glob("*.json"))) == 1
    parser.calls.clear()
    assert voc.load_voc(root, [("2007", "trainval")], cache_dir=cache) == first
    assert parser.calls == []  # a second start parses nothing
    edited = root / "VOC2007/Annotations/000002.xml"
    edited.write_text(xml_text(objects=[obj("cat"), obj()]))  # new size
    same_size = root / "VOC2007/Annotations/000003.xml"
    same_size.write_text(xml_text(objects=[obj(x0=49)]))  # same size: only the mtime tells
    os.utime(same_size, ns=(edited.stat().st_mtime_ns + 10**9,) * 2)
    again = voc.load_voc(root, [("2007", "trainval")], cache_dir=cache)
    assert sorted(parser.calls) == ["000002", "000003"]
    assert [o.name for o in again[2].annotation.objects] == ["cat", "dog"]
    assert again[3].annotation.objects[0].xmin == 49


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    make_devkit(tmp_path / "d", "2007", {"000001": xml_text(objects=[obj()])})
    first = voc.load_voc(tmp_path / "d", [("2007", "trainval")], cache_dir=tmp_path / "c")
    (cache_file,) = (tmp_path / "c").glob("*.json")
    parser = CountingParser(monkeypatch)
    for damaged in ('{"version": 1, "entries": ', '{"version": 1, "entries": {"000001.xml": [1, 2]}}'):
        cache_file.write_text(damaged)
        assert voc.load_voc(tmp_path / "d", [("2007", "trainval")], cache_dir=tmp_path / "c") == first
    assert parser.calls == ["000001", "000001"]


def test_darknet_label_rows_by_hand(tmp_path):
    """voc_label.py's convert: x = ((xmin + xmax)/2 - 1)/width, w = (xmax - xmin)/width; no difficult."""
    text = xml_text(
        objects=[obj("dog"), obj("person", 8, 12, 352, 498, difficult=1), obj("cat", 1, 1, 353, 500)]
    )
    rows = labels.darknet_label_rows(voc.parse_annotation(write(tmp_path, text)), voc.VOC_CLASSES)
    expected = [
        [11, 120.5 / 353, 304.5 / 500, 147 / 353, 131 / 500],  # dog: (48+195)/2-1, (240+371)/2-1
        [7, 176 / 353, 249.5 / 500, 352 / 353, 499 / 500],  # cat filling the image
    ]
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-15)


def test_write_and_read_darknet_labels(tmp_path):
    make_devkit(tmp_path, "2007", {"000001": xml_text(objects=[obj(), obj("cat", 10, 20, 30, 40)])})
    records = voc.load_voc(tmp_path, [("2007", "trainval")], cache=False)
    (path,) = labels.write_darknet_labels(records, voc.VOC_CLASSES)
    assert path == tmp_path / "VOC2007/labels/000001.txt"
    assert path.read_text().splitlines()[0].split()[0] == "11"
    np.testing.assert_array_equal(
        labels.read_yolo_labels(path, 20), labels.record_labels(records[0], voc.VOC_CLASSES)
    )
    (rec,) = labels.load_darknet_list(_list_file(tmp_path, records), 20)
    np.testing.assert_array_equal(rec.labels, labels.read_yolo_labels(path))


def _list_file(tmp_path: Path, records) -> Path:
    p = tmp_path / "train.txt"
    p.write_text("".join(r.image_path + "\n" for r in records))
    return p


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", "expected 'class x y w h', got 4 fields"),
        ("0 0.5 0.5 0.2 abc", "not a number"),
        ("1.5 0.5 0.5 0.2 0.2", "bad class id '1.5'"),
        ("-1 0.5 0.5 0.2 0.2", "bad class id"),
        ("20 0.5 0.5 0.2 0.2", "bad class id '20'"),
        ("0 1.5 0.5 0.2 0.2", "not normalised"),
        ("0 0.5 0.5 0 0.2", "not normalised"),
        ("0 0.5 0.5 0.2 1.2", "not normalised"),
    ],
)
def test_bad_yolo_label_lines_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "l.txt"
    p.write_text(f"3 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(DatasetError, match=message) as e:
        labels.read_yolo_labels(p, num_classes=20)
    assert f"{p}:3:" in str(e.value)


def test_label_path_follows_darknet():
    assert labels.label_path("/d/VOC2007/JPEGImages/000001.jpg") == Path("/d/VOC2007/labels/000001.txt")
    assert labels.label_path("/d/coco/images/train/a.png") == Path("/d/coco/labels/train/a.txt")


def test_class_names(tmp_path):
    p = tmp_path / "voc.names"
    labels.write_class_names(p, voc.VOC_CLASSES)
    assert tuple(labels.read_class_names(p)) == voc.VOC_CLASSES
    for text, message in [("a\nb\na\n", "duplicate class names"), ("\n\n", "no class names")]:
        p.write_text(text)
        with pytest.raises(DatasetError, match=message):
            labels.read_class_names(p)
    with pytest.raises(DatasetError, match="cannot read class names"):
        labels.read_class_names(tmp_path / "absent.names")


def test_voc2007_test_ground_truth_counts(shared):
    """The official VOC2007 test counts: 4,952 images, 14,976 objects, 2,944 difficult."""
    root = shared("voc2007_test")
    records = voc.load_voc(root, voc.TEST_SETS, cache=False, require_images=False)
    objects = [o for r in records for o in r.annotation.objects]
    assert (len(records), len(objects), sum(o.difficult for o in objects)) == (4952, 14976, 2944)
    assert {o.name for o in objects} == set(voc.VOC_CLASSES)
