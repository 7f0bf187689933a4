"""The cfg parser reads files the way darknet's `read_cfg` does, and names file and line on errors."""

from __future__ import annotations

import re

import pytest

from yolov2.darknet.cfg import CfgError, load_cfg, parse_cfg, parse_cfg_text, stock_cfg

TEXT = """\
# a comment
[net]
width = 416
 height=416
; another comment
hue=.1

[convolutional]
batch_normalize=1
activation=le aky
[route]
layers = -1, 8
"""


def test_sections_options_and_whitespace():
    secs = parse_cfg_text(TEXT, "t.cfg")
    assert [s.type for s in secs] == ["net", "convolutional", "route"]
    assert [s.line for s in secs] == [2, 8, 11]
    # darknet's strip() removes every space and tab, also inside values
    assert secs[0].options == {"width": "416", "height": "416", "hue": ".1"}
    assert secs[1].get_str("activation") == "leaky"
    assert secs[2].get_list("layers", int) == [-1, 8]
    assert secs[0].get_float("hue") == pytest.approx(0.1)


def test_defaults_and_typed_lookups():
    net = parse_cfg_text(TEXT, "t.cfg")[0]
    assert net.get_int("channels", 3) == 3
    assert net.get_list("steps", float, [1.0]) == [1.0]
    assert net.has("width") and not net.has("channels")
    with pytest.raises(CfgError, match=r"t\.cfg: \[net\] at line 2, key 'batch': required key is missing"):
        net.get_int("batch")


@pytest.mark.parametrize("key, getter, message", [
    ("width", "get_float", None),
    ("hue", "get_int", r"t\.cfg: \[net\] at line 2, key 'hue': expected an integer, got '\.1'"),
])
def test_typed_lookup_errors_name_file_line_and_key(key, getter, message):
    net = parse_cfg_text(TEXT, "t.cfg")[0]
    if message is None:
        assert getattr(net, getter)(key) == 416.0
    else:
        with pytest.raises(CfgError, match=message):
            getattr(net, getter)(key)


def test_bad_list_names_key():
    sec = parse_cfg_text("[route]\nlayers=-1,x\n", "r.cfg")[0]
    with pytest.raises(CfgError, match=r"r\.cfg: \[route\] at line 1, key 'layers': expected a list of int"):
        sec.get_list("layers", int)


@pytest.mark.parametrize("text, line, what", [
    ("[net]\nwidth=416\n[convolutional\nsize=3\n", 3, "malformed section header"),
    ("[net]\nwidth 416\n", 2, "expected 'key=value'"),
    ("width=416\n[net]\n", 1, "appears before any"),
    ("[net]\n=416\n", 2, "empty key"),
    ("[]\n", 1, "malformed section header"),
])
def test_syntax_errors_name_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(CfgError, match=rf"{re.escape(str(path))}:{line}: .*{what}"):
        parse_cfg(path)


@pytest.mark.parametrize("content, what", [
    (None, "cfg file not found"),
    (b"# only comments\n\n", "no sections found"),
    (b"\xff\xfe\x00\x00\x02", "not a text file"),
])
def test_unreadable_cfg_files(tmp_path, content, what):
    path = tmp_path / "x.cfg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CfgError, match=rf"{re.escape(str(path))}.*{what}"):
        parse_cfg(path)


@pytest.mark.parametrize("name, types", [
    ("yolov2-tiny-voc", ["net"] + ["convolutional", "maxpool"] * 6 + ["convolutional"] * 3 + ["region"]),
    ("yolov2-tiny-synth", ["net"] + ["convolutional", "maxpool"] * 6 + ["convolutional"] * 3 + ["region"]),
    ("yolov2-voc", ["net"] + ["convolutional", "maxpool"] * 2 + ["convolutional"] * 3 + ["maxpool"]
     + ["convolutional"] * 3 + ["maxpool"] + ["convolutional"] * 5 + ["maxpool"] + ["convolutional"] * 7
     + ["route", "convolutional", "reorg", "route", "convolutional", "convolutional", "region"]),
])
def test_stock_cfgs_layer_structure(name, types):
    secs = parse_cfg(stock_cfg(name))
    assert [s.type for s in secs] == types
    assert secs[0].get_int("width") == secs[0].get_int("height") == 416


def test_stock_cfg_unknown_name_lists_known():
    with pytest.raises(CfgError, match="no shipped cfg named 'yolov9'; known: .*yolov2-tiny-voc"):
        stock_cfg("yolov9")


def test_load_cfg_takes_path_shipped_name_or_sections(tmp_path):
    by_name = load_cfg("yolov2-tiny-voc")
    assert by_name[0].path == str(stock_cfg("yolov2-tiny-voc"))
    assert [s.options for s in load_cfg("yolov2-tiny-voc.cfg")] == [s.options for s in by_name]
    assert load_cfg(by_name) == by_name
    (tmp_path / "mine.cfg").write_text("[net]\nwidth=64\n")
    assert load_cfg(tmp_path / "mine.cfg")[0].options == {"width": "64"}
    with pytest.raises(CfgError, match="yolov9.cfg: cfg file not found .nor a shipped cfg"):
        load_cfg("yolov9.cfg")
    with pytest.raises(CfgError, match=rf"{re.escape(str(tmp_path / 'no.cfg'))}: cfg file not found"):
        load_cfg(tmp_path / "no.cfg")
