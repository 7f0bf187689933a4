"""Pascal VOC devkit reader: XML annotations, their cache, image sets and the 07+12 composition.

References: the VOC devkit layout (`VOC{year}/Annotations/*.xml`, `JPEGImages/*.jpg`,
`ImageSets/Main/{set}.txt`); darknet `scripts/voc_label.py` (which objects darknet keeps: known
classes; the label lines it writes from them are `yolov2.data.labels`).

Box convention: `VOCObject` holds **VOC pixel corners** exactly as in the XML (1-based, inclusive,
no shift).

"Outside the image" means `xmin < 0`, `ymin < 0`, `xmax > width + 1` or `ymax > height + 1`:
VOC is 1-based (valid corners 1..width), but 0-based tools write 0 and 1-based-exclusive tools
write width + 1, both harmless; anything further out is a labelling error.

Image ids (the first word of each ImageSets line) name files under `JPEGImages/` and `Annotations/`;
they may name a subfolder (`sub/000001`) but never leave the devkit (`..`, a leading `/`). The XML's
`<size>` must be the image's real size (`check_image_size`): darknet normalises the boxes by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from defusedxml import ElementTree

from yolov2.files import read_text, write_text

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

# The standard composition: train on 07+12 trainval, test on 07 test.
TRAIN_SETS: tuple[tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))
TEST_SETS: tuple[tuple[str, str], ...] = (("2007", "test"),)


class DatasetError(ValueError):
    """A dataset file is missing or wrong; the message names the file (and object or line)."""


@dataclass
class VOCObject:
    """One `<object>`: class name and VOC pixel corners (1-based inclusive, as in the XML)."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False


@dataclass
class Annotation:
    """One annotation file: image size in pixels and its objects (may be empty)."""

    filename: str
    width: int
    height: int
    objects: list[VOCObject] = field(default_factory=list)
    path: str = ""


@dataclass
class Record:
    """One training/testing image: its path and annotation (None for YOLO-text datasets).

    `labels`, when set, are darknet label rows `[id, x, y, w, h]` (normalised centre-size) that
    override the ones derived from `annotation` (custom datasets labelled in YOLO text format).
    """

    image_path: str
    annotation: Annotation | None
    labels: np.ndarray | None = None

    @property
    def image_id(self) -> str:
        return Path(self.image_path).stem


# --------------------------------------------------------------------------- XML parsing


def _text(elem, tag: str, where: str, default: str | None = None) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise DatasetError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(elem, tag: str, where: str) -> float:
    text = _text(elem, tag, where)
    try:
        value = float(text)  # VOC 2012 has a few "273.5"-style coordinates
    except ValueError:
        raise DatasetError(f"{where}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: <{tag}> is not finite: {text!r}")
    return value


def _flag(elem, tag: str, where: str) -> bool:
    # missing or empty <difficult>/<truncated> means 0 (third-party VOC-style files omit them)
    child = elem.find(tag)
    if child is None or not (child.text or "").strip():
        return False
    return _number(elem, tag, where) != 0


def _check_box(xmin: float, ymin: float, xmax: float, ymax: float, width: int, height: int,
               where: str) -> None:
    """A box must be non-empty and inside the image (see the module docstring)."""
    if xmin >= xmax or ymin >= ymax:
        raise DatasetError(f"{where}: empty box xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax}")
    if xmin < 0 or ymin < 0 or xmax > width + 1 or ymax > height + 1:
        raise DatasetError(
            f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) outside the {width}x{height} image"
        )


def _check_size(width: float, height: float, where: str) -> None:
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DatasetError(f"{where}: bad image size {width}x{height}")


def _parse_object(obj, index: int, width: int, height: int, xml_path: str) -> VOCObject:
    where = f"{xml_path}: object {index}"
    name = _text(obj, "name", where)
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DatasetError(f"{where} ({name}): missing <bndbox>")
    where = f"{where} ({name})"
    xmin, ymin, xmax, ymax = (_number(bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
    _check_box(xmin, ymin, xmax, ymax, width, height, where)
    return VOCObject(
        name, xmin, ymin, xmax, ymax, _flag(obj, "difficult", where), _flag(obj, "truncated", where)
    )


def parse_annotation(xml_path: str | Path) -> Annotation:
    """Parse one VOC XML file (untrusted input, read with defusedxml); raise DatasetError if bad."""
    xml_path = str(xml_path)
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, ValueError) as e:  # defusedxml's refusals are ValueErrors
        raise DatasetError(f"{xml_path}: malformed XML: {e}") from None
    except OSError as e:
        raise DatasetError(f"{xml_path}: cannot read: {e.strerror or e}") from None
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{xml_path}: missing <size>")
    width, height = _number(size, "width", xml_path), _number(size, "height", xml_path)
    _check_size(width, height, xml_path)
    width, height = int(width), int(height)
    filename = _text(root, "filename", xml_path, default=Path(xml_path).stem + ".jpg")
    objects = [_parse_object(o, i, width, height, xml_path) for i, o in enumerate(root.iter("object"))]
    return Annotation(filename, width, height, objects, xml_path)


def check_image_size(ann: Annotation, image: np.ndarray, image_path: str | Path) -> None:
    """The XML's `<size>` must be the decoded image's (H, W, 3) size: the labels are normalised by it."""
    h, w = image.shape[:2]
    if (ann.width, ann.height) != (w, h):
        raise DatasetError(f"{ann.path}: <size> says {ann.width}x{ann.height}, but {image_path} is {w}x{h} "
                           f"pixels (darknet normalises the boxes by <size>: fix the annotation)")


# --------------------------------------------------------------------------- annotation cache
# One JSON file per Annotations/ folder, in the user's cache dir (the VOC root may be read-only),
# entry per XML keyed by its path under that folder (`sub/000001.xml`) and validated by its
# (mtime_ns, size): a second start stats the files instead of parsing them, and an edited file is
# re-parsed alone. JSON, not pickle: a cache file is as untrusted as the XML it replaces, so what is
# read back is checked as strictly as the XML (`_from_json`); an entry that fails is re-parsed.
_CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """`$YOLOV2_CACHE`, else `$XDG_CACHE_HOME/yolov2`, else `~/.cache/yolov2`."""
    if os.environ.get("YOLOV2_CACHE"):
        return Path(os.environ["YOLOV2_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yolov2"


def cache_file(annotations_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the parsed annotations of one `Annotations/` folder are cached."""
    key = hashlib.sha1(str(Path(annotations_dir).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"voc-annotations-{key}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(read_text(path))
        if data.get("version") == _CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError, AttributeError):
        pass  # absent, stale or corrupt: rebuilt from the XML
    return {}


def _write_cache(path: Path, entries: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic, so ranks starting together never read half a file
        write_text(path, json.dumps({"version": _CACHE_VERSION, "entries": entries}))
    except OSError as e:
        log.warning("annotation cache not written (%s): %s", path, e)


def _to_json(ann: Annotation) -> dict:
    objs = [[o.name, o.xmin, o.ymin, o.xmax, o.ymax, o.difficult, o.truncated] for o in ann.objects]
    return {"filename": ann.filename, "width": ann.width, "height": ann.height, "objects": objs}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _from_json(d: dict, path: str) -> Annotation:
    """A cache entry back to an Annotation, checked as the XML is (ValueError: not to be trusted)."""
    filename, width, height, objs = d["filename"], d["width"], d["height"], d["objects"]
    if not (isinstance(filename, str) and isinstance(objs, list) and _finite(width) and _finite(height)):
        raise ValueError("malformed cache entry")
    _check_size(width, height, path)
    objects = []
    for o in objs:
        if not isinstance(o, list) or len(o) != 7:
            raise ValueError("malformed cache object")
        name, *box, difficult, truncated = o
        if not (isinstance(name, str) and name.strip() == name and name and all(map(_finite, box))
                and isinstance(difficult, bool) and isinstance(truncated, bool)):
            raise ValueError("malformed cache object")
        _check_box(*box, int(width), int(height), path)
        objects.append(VOCObject(name, *map(float, box), difficult, truncated))
    return Annotation(filename, int(width), int(height), objects, path)


def _cached(entry, st: os.stat_result, path: str) -> Annotation | None:
    """The cached annotation if `entry` is well formed and the file's (mtime_ns, size) still match."""
    try:
        if entry["mtime_ns"] == st.st_mtime_ns and entry["size"] == st.st_size:
            return _from_json(entry["annotation"], path)
    except (KeyError, TypeError, ValueError):
        pass  # a damaged entry is a miss
    return None


def _parse_cached(
    folder: Path, xmls: list[Path], use_cache: bool, cache_dir: str | Path | None, skip_bad: bool,
    bad: list[str],
) -> list[Annotation | None]:
    """parse_annotation for each file under `folder`, through the cache; None (and a note in `bad`)
    if skipped."""
    path = cache_file(folder, cache_dir) if use_cache and xmls else None
    entries = _read_cache(path) if path else {}
    out: list[Annotation | None] = []
    changed = False
    for xml in xmls:
        try:
            st = xml.stat()
        except OSError:
            out.append(_bad(DatasetError(f"{xml}: missing annotation"), skip_bad, bad))
            continue
        key = xml.relative_to(folder).as_posix()  # the full relative path: sub/000001 is not 000001
        hit = _cached(entries.get(key), st, str(xml))
        if hit is not None:
            out.append(hit)
            continue
        try:
            ann = parse_annotation(xml)
        except DatasetError as err:
            out.append(_bad(err, skip_bad, bad))
            continue
        entries[key] = {"mtime_ns": st.st_mtime_ns, "size": st.st_size, "annotation": _to_json(ann)}
        changed = True
        out.append(ann)
    if path and changed:
        _write_cache(path, entries)
    return out


def _bad(err: DatasetError, skip_bad: bool, bad: list[str]) -> None:
    if not skip_bad:
        raise err
    bad.append(str(err))
    return None


# --------------------------------------------------------------------------- devkit


def read_image_set(root: str | Path, year: str, image_set: str) -> list[str]:
    """Image ids listed in `root/VOC{year}/ImageSets/Main/{image_set}.txt` (first token per line).

    UTF-8 text; an id that would leave the devkit's folders is refused (:func:`check_image_id`).
    """
    path = Path(root) / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
    try:
        lines = read_text(path, DatasetError).splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image set: {e.strerror or e}") from None
    return [check_image_id(line.split()[0], f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]


def check_image_id(image_id: str, where: str) -> str:
    """An image id names `JPEGImages/<id>.jpg` and `Annotations/<id>.xml`: it may hold subfolders
    (`sub/000001`), never a way out of them."""
    parts = image_id.split("/")
    if "\\" in image_id or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"{where}: image id {image_id!r} leaves the devkit's folders (an id may name a "
                           f"subfolder, as sub/000001, but holds no '..', '.', empty part, leading '/' "
                           f"or backslash)")
    return image_id


def _check_classes(ann: Annotation, classes: tuple[str, ...] | list[str], ignore_unknown: bool) -> Annotation:
    unknown = [(i, o.name) for i, o in enumerate(ann.objects) if o.name not in classes]
    if not unknown:
        return ann
    if not ignore_unknown:
        i, name = unknown[0]
        raise DatasetError(f"{ann.path}: object {i}: unknown class name {name!r} (not in the class list)")
    kept = [o for o in ann.objects if o.name in classes]
    return Annotation(ann.filename, ann.width, ann.height, kept, ann.path)


def load_voc(
    root: str | Path,
    sets: tuple[tuple[str, str], ...] | list[tuple[str, str]] = TRAIN_SETS,
    classes: tuple[str, ...] | list[str] = VOC_CLASSES,
    skip_bad: bool = False,
    ignore_unknown: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    require_images: bool = True,
) -> list[Record]:
    """Records of the composed image sets, in set order then listing order.

    A missing image or bad annotation raises DatasetError naming the file; with `skip_bad` such
    images are skipped and counted in a logged warning. An object whose class is not in `classes`
    is an error unless `ignore_unknown` (then dropped, as darknet's voc_label.py does, so one can
    train on a subset of the classes). Parsed XML is cached per file (`_parse_cached`).
    `require_images=False` reads annotations alone (anchors, evaluation of a test set without images).
    """
    root = Path(root)
    records: list[Record] = []
    bad: list[str] = []
    for year, image_set in sets:
        base = root / f"VOC{year}"
        ids = read_image_set(root, year, image_set)
        xmls = [base / "Annotations" / f"{i}.xml" for i in ids]
        anns = _parse_cached(base / "Annotations", xmls, cache, cache_dir, skip_bad, bad)
        for image_id, ann in zip(ids, anns, strict=True):
            if ann is None:
                continue
            image = base / "JPEGImages" / f"{image_id}.jpg"
            try:
                if require_images and not image.is_file():
                    raise DatasetError(f"{image}: missing image (listed in {image_set}.txt of VOC{year})")
                ann = _check_classes(ann, classes, ignore_unknown)
            except DatasetError as e:
                _bad(e, skip_bad, bad)
                continue
            records.append(Record(str(image), ann))
    if bad:
        log.warning("skipped %d bad images of %s (first: %s)", len(bad), root, bad[0])
    return records

