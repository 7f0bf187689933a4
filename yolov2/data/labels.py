"""darknet's YOLO text labels and class-name files, from VOC annotations or a darknet image list.

References: darknet `scripts/voc_label.py` (`convert`: the label lines darknet trains on, one
`labels/{id}.txt` beside each `JPEGImages/`) and `src/data.c` (`fill_truth_detection`: where a label
file lives; `read_boxes`: how it is read). Class-name files are darknet's `names=` (`data/voc.names`).

Box convention: `darknet_label_rows` and the YOLO text files hold **normalised centre-size**
`[id, x, y, w, h]` with voc_label.py's `- 1` pixel shift of the centre; the VOC pixel corners they
come from are `yolov2.data.voc`'s (1-based, inclusive).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yolov2.data.voc import Annotation, DatasetError, Record
from yolov2.files import read_text, write_text

# --------------------------------------------------------------------------- darknet labels


def darknet_label_rows(annotation: Annotation, classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """voc_label.py's lines for the non-difficult objects: (K, 5) `[id, x, y, w, h]`.

    Normalised centre-size with darknet's shift: x = ((xmin + xmax)/2 - 1)/width, w = (xmax - xmin)/width.
    """
    ids = {name: i for i, name in enumerate(classes)}
    dw, dh = 1.0 / annotation.width, 1.0 / annotation.height
    rows = []
    for i, o in enumerate(annotation.objects):
        if o.difficult:
            continue
        if o.name not in ids:
            raise DatasetError(f"{annotation.path}: object {i}: unknown class name {o.name!r}")
        x, y = (o.xmin + o.xmax) / 2.0 - 1, (o.ymin + o.ymax) / 2.0 - 1
        rows.append((ids[o.name], x * dw, y * dh, (o.xmax - o.xmin) * dw, (o.ymax - o.ymin) * dh))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def record_labels(record: Record, classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """The (K, 5) `[id, x, y, w, h]` rows a record trains on (its own labels, else from the XML)."""
    if record.labels is not None:
        return record.labels
    if record.annotation is None:
        return np.zeros((0, 5))
    return darknet_label_rows(record.annotation, classes)


def label_path(image_path: str | Path) -> Path:
    """darknet's label file for an image (data.c `fill_truth_detection`): JPEGImages -> labels, .txt."""
    p = Path(image_path)
    parts = ["labels" if part in ("JPEGImages", "images") else part for part in p.parent.parts]
    return Path(*parts) / (p.stem + ".txt")


def write_yolo_labels(path: str | Path, rows: np.ndarray) -> None:
    """Write (K, 5) `[id, x, y, w, h]` rows as `id x y w h` lines (voc_label.py's format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{int(r[0])} {r[1]!r} {r[2]!r} {r[3]!r} {r[4]!r}\n" for r in rows.tolist()]
    write_text(path, "".join(lines), durable=False)  # one of many (a label per image)


def write_darknet_labels(records: list[Record], classes: tuple[str, ...] | list[str]) -> list[Path]:
    """voc_label.py: one `labels/{id}.txt` beside each `JPEGImages/`; returns the paths written."""
    out = []
    for r in records:
        out.append(label_path(r.image_path))
        write_yolo_labels(out[-1], record_labels(r, classes))
    return out


def read_yolo_labels(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read a YOLO text label file -> (K, 5) `[id, x, y, w, h]` normalised centre-size.

    Errors name the file and line: wrong field count, non-numbers, a non-integer or out-of-range
    class id, centres outside [0, 1], sizes outside (0, 1].
    """
    path = Path(path)
    try:
        lines = read_text(path, DatasetError).splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read labels: {e.strerror or e}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_label_line(line, f"{path}:{n}", num_classes))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _label_line(line: str, where: str, num_classes: int | None) -> list[float]:
    fields = line.split()
    if len(fields) != 5:
        raise DatasetError(f"{where}: expected 'class x y w h', got {len(fields)} fields: {line.strip()!r}")
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise DatasetError(f"{where}: not a number in {line.strip()!r}") from None
    cls, x, y, w, h = values
    if cls != int(cls) or cls < 0 or (num_classes is not None and cls >= num_classes):
        raise DatasetError(f"{where}: bad class id {fields[0]!r}")
    eps = 1e-6  # printed floats may overshoot by an ulp
    if not (-eps <= x <= 1 + eps and -eps <= y <= 1 + eps and 0 < w <= 1 + eps and 0 < h <= 1 + eps):
        raise DatasetError(f"{where}: box ({x}, {y}, {w}, {h}) is not normalised centre-size in [0, 1]")
    return values


def resolve(value: str, named_in: Path) -> Path:
    """A path written in `named_in`: as darknet opens it (from the current folder), else relative to
    the folder of `named_in`."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return named_in.parent / p


def read_image_list(list_path: str | Path) -> list[Path]:
    """A darknet image list (one path per line), each image resolved as darknet opens it."""
    list_path = Path(list_path)
    try:
        lines = read_text(list_path, DatasetError).splitlines()
    except OSError as e:
        raise DatasetError(f"{list_path}: cannot read image list: {e.strerror or e}") from None
    paths = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            p = resolve(line.strip(), list_path)
            if not p.is_file():
                raise DatasetError(f"{list_path}:{n}: missing image {p}")
            paths.append(p)
    if not paths:
        raise DatasetError(f"{list_path}: no images listed")
    return paths


def load_darknet_list(list_path: str | Path, num_classes: int | None = None) -> list[Record]:
    """A darknet `train.txt` (one image path per line) with labels from `label_path` -> records."""
    return [Record(str(p), None, read_yolo_labels(label_path(p), num_classes))
            for p in read_image_list(list_path)]


# --------------------------------------------------------------------------- class lists


def read_class_names(path: str | Path) -> list[str]:
    """A `voc.names`-style file: one class name per line (blank lines ignored, no duplicates), UTF-8."""
    path = Path(path)
    try:
        names = [s.strip() for s in read_text(path, DatasetError).splitlines() if s.strip()]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read class names: {e.strerror or e}") from None
    if not names:
        raise DatasetError(f"{path}: no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{path}: duplicate class names {dup}")
    return names


def write_class_names(path: str | Path, names: tuple[str, ...] | list[str]) -> None:
    """Write one class name per line (the `--classes FILE` / darknet `names=` format)."""
    write_text(path, "".join(f"{n}\n" for n in names))
