"""Darknet-format datasets: a `.data` file naming image lists, with one YOLO label file per image.

References: darknet `cfg/voc.data` (`classes=`, `train=`, `valid=`, `names=`, `backup=`), `src/option_list.c`
(`read_data_cfg`: `key=value` lines, `#` comments), `src/data.c` (`fill_truth_detection`: the label file of
an image, `images` / `JPEGImages` -> `labels`, the extension -> `.txt`), `scripts/voc_label.py` (the labels
and lists written from a VOC devkit: :func:`write_voc_labels`, the `labels` command).

Paths in a `.data` file and in its image lists are resolved as darknet resolves them, from the current
folder; one that does not exist there is taken relative to the file that names it (so a dataset folder
can be moved with its `.data`). Boxes: label rows are **normalised centre-size** `[id, x, y, w, h]`
with voc_label.py's `- 1` shift; `annotations_from_records` turns them back into VOC pixel corners
(1-based) for the VOC evaluation.

Every dataset-taking command accepts either a VOC devkit root or a `.data` file (`--data`), and finds the
class list the same way (:func:`dataset_names`): `names=` of a `.data`, `classes.names` in a devkit root,
else nothing (the caller falls back to VOC's 20 for a 20-class cfg).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolov2.data.image import ImageError, header_size
from yolov2.data.labels import (
    darknet_label_rows,
    label_path,
    read_class_names,
    read_image_list,
    read_yolo_labels,
    resolve,
    write_class_names,
    write_yolo_labels,
)
from yolov2.data.voc import VOC_CLASSES, Annotation, DatasetError, Record, VOCObject, load_voc
from yolov2.files import read_text, write_text

KEYS = ("classes", "train", "valid", "names", "backup", "eval", "results")
# voc_label.py's image sets, and what its `cat` makes train.txt of
VOC_LABEL_SETS: tuple[tuple[str, str], ...] = (("2012", "train"), ("2012", "val"), ("2007", "train"),
                                               ("2007", "val"), ("2007", "test"))
VOC_TRAIN_LISTS = ("2007_train", "2007_val", "2012_train", "2012_val")


@dataclass
class DarknetData:
    """A parsed `.data` file; paths resolved (:func:`resolve`), None when the key is absent."""

    path: Path
    classes: int | None
    train: Path | None
    valid: Path | None
    names: Path | None
    backup: Path | None
    options: dict[str, str] = field(default_factory=dict)

    def image_list(self, split: str) -> Path:
        """The `train=` or `valid=` list; an error naming the file when it has none."""
        p = {"train": self.train, "valid": self.valid}[split]
        if p is None:
            raise DatasetError(f"{self.path}: no {split}= image list")
        return p

    def class_names(self) -> list[str] | None:
        """`names=`, checked against `classes=` when both are given."""
        if self.names is None:
            return None
        names = read_class_names(self.names)
        if self.classes is not None and len(names) != self.classes:
            raise DatasetError(f"{self.path}: classes={self.classes}, but {self.names} lists "
                               f"{len(names)} names")
        return names


def is_data_file(data: str | Path) -> bool:
    """True for a darknet `.data` file (a file; a devkit root is a folder)."""
    return Path(data).is_file()


def read_data_file(path: str | Path) -> DarknetData:
    """Parse a darknet `.data` file (`key = value` lines; `#` and `;` comment lines, blank lines)."""
    path = Path(path)
    try:
        text = read_text(path, DatasetError)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the .data file: {e.strerror or e}") from None
    options: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if "=" not in s:
            raise DatasetError(f"{path}:{n}: expected 'key = value', got {s!r}")
        key, value = (t.strip() for t in s.split("=", 1))
        if not key or not value:
            raise DatasetError(f"{path}:{n}: expected 'key = value', got {s!r}")
        options[key] = value
    classes = None
    if "classes" in options:
        text = options["classes"]
        if not text.isdigit() or int(text) < 1:
            raise DatasetError(f"{path}: classes={text} is not a positive integer")
        classes = int(text)
    if "train" not in options and "valid" not in options:
        raise DatasetError(f"{path}: neither train= nor valid= (is this a darknet .data file?)")

    def get(key: str) -> Path | None:
        return resolve(options[key], path) if key in options else None

    return DarknetData(path, classes, get("train"), get("valid"), get("names"), get("backup"), options)


def dataset_names(data: str | Path) -> tuple[str, list[str] | None]:
    """The dataset's own class list and where it came from: `names=` of a `.data` file, `classes.names`
    in a devkit root; (where, None) when it has none."""
    data = Path(data)
    if is_data_file(data):
        d = read_data_file(data)
        return str(d.names or data), d.class_names()
    names = data / "classes.names"
    if names.is_file():
        return str(names), read_class_names(names)
    return str(data), None


def default_names(data: str | Path, names: str | Path | None = None) -> list[str]:
    """The class list a dataset command uses: `names` (a file), else the dataset's own, else VOC's 20."""
    if names is not None:
        return read_class_names(names)
    return dataset_names(data)[1] or list(VOC_CLASSES)


def load_split(data: str | Path, split: str = "train", num_classes: int | None = None) -> list[Record]:
    """The records of a `.data` file's `train=` or `valid=` list, labels from each image's label file."""
    d = read_data_file(data)
    n = num_classes if num_classes is not None else d.classes
    images = read_image_list(d.image_list(split))
    return [Record(str(p), None, read_yolo_labels(label_path(p), n)) for p in images]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header (no decoding), else an error naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise DatasetError(f"{p}: cannot read image: {e.strerror or e}") from None
    size = header_size(head)
    if size is None:  # a format whose header we do not read, or a JPEG with a long preamble
        from yolov2.data.image import read_image

        try:
            im = read_image(p)
        except ImageError as e:
            raise DatasetError(str(e)) from None
        size = (im.shape[1], im.shape[0])
    return size


def annotations_from_records(records: list[Record],
                             names: list[str] | tuple[str, ...]) -> dict[str, Annotation]:
    """YOLO label rows -> VOC annotations (1-based pixel corners, no difficult objects), keyed by the
    image id darknet's `valid` writes (the file's stem), for the VOC evaluation."""
    out: dict[str, Annotation] = {}
    for r in records:
        image_id = Path(r.image_path).stem
        if image_id in out:
            raise DatasetError(f"{r.image_path}: image id {image_id!r} appears twice in the list (darknet's "
                               f"result files name images by their file name alone)")
        w, h = image_size(r.image_path)
        objects = []
        for cls, x, y, bw, bh in np.asarray(r.labels).tolist():
            cx, cy, pw, ph = x * w + 1, y * h + 1, bw * w, bh * h  # voc_label.py's convert, inverted
            objects.append(VOCObject(names[int(cls)], cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2))
        out[image_id] = Annotation(Path(r.image_path).name, w, h, objects, str(label_path(r.image_path)))
    return out


# --------------------------------------------------------------------------- voc_label.py


def write_voc_labels(root: str | Path, out: str | Path | None = None, classes: list[str] | None = None,
                     sets: tuple[tuple[str, str], ...] | list[tuple[str, str]] | None = None,
                     force: bool = False) -> list[Path]:
    """What darknet's `voc_label.py` writes, from a VOC devkit at `root`: `VOC<year>/labels/<id>.txt` for
    every image of the sets present (non-difficult objects of known classes, others skipped), the lists
    `<year>_<set>.txt` (absolute image paths) and `train.txt` (07+12 train and val) in `out`, plus the
    names file `voc.names` and `voc.data` (train.txt, 2007_test.txt) there. Returns the lists and files
    written. Existing lists, names and .data are refused unless `force`; label files are darknet's own
    derived files and are rewritten."""
    root = Path(root).absolute()
    out = Path(out).absolute() if out is not None else root
    if not root.is_dir():
        raise DatasetError(f"{root}: no such VOC devkit folder")
    classes = list(classes) if classes is not None else (dataset_names(root)[1] or list(VOC_CLASSES))
    sets = [s for s in (sets or VOC_LABEL_SETS)
            if (root / f"VOC{s[0]}" / "ImageSets" / "Main" / f"{s[1]}.txt").is_file()]
    if not sets:
        raise DatasetError(f"{root}: no VOC<year>/ImageSets/Main/<set>.txt of {VOC_LABEL_SETS}")
    lists = {f"{y}_{s}": out / f"{y}_{s}.txt" for y, s in sets}
    train = [lists[k] for k in VOC_TRAIN_LISTS if k in lists]
    files = [*lists.values(), out / "voc.names"]
    valid = lists.get("2007_test") or (train[-1] if train else None)
    if train:
        files += [out / "train.txt", out / "voc.data"]
    existing = [f for f in files if f.exists()]
    if existing and not force:
        raise DatasetError(f"{existing[0]}: exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    texts: dict[Path, str] = {}
    for year, image_set in sets:
        records = load_voc(root, [(year, image_set)], classes, ignore_unknown=True, require_images=False)
        for r in records:
            write_yolo_labels(label_path(r.image_path), darknet_label_rows(r.annotation, classes))
        texts[lists[f"{year}_{image_set}"]] = "".join(f"{r.image_path}\n" for r in records)
    if train:
        texts[out / "train.txt"] = "".join(texts[p] for p in train)
    for p, text in texts.items():
        write_text(p, text)
    write_class_names(out / "voc.names", classes)
    if train:
        write_text(out / "voc.data", f"classes= {len(classes)}\ntrain  = {out / 'train.txt'}\n"
                   f"valid  = {valid}\nnames = {out / 'voc.names'}\nbackup = backup\n")
    return files


def main(argv: list[str]) -> int:
    """`python -m yolov2 labels VOCROOT`: darknet's label files and image lists (voc_label.py)."""
    from yolov2.data.cli import parser

    p = parser("labels", "Write darknet's YOLO label files (VOC<year>/labels/<id>.txt) and image lists "
               "(<year>_<set>.txt, train.txt) with a voc.names and voc.data, as darknet's "
               "scripts/voc_label.py does.", "python -m yolov2 labels data/synthetic")
    p.add_argument("root", help="VOC devkit root (holding VOC2007/, VOC2012/)")
    p.add_argument("--out", help="folder for the lists, voc.names and voc.data (default: the root)")
    p.add_argument("--names", "--classes", dest="names", metavar="FILE",
                   help="class names file (default: ROOT/classes.names, else VOC's 20)")
    p.add_argument("--force", action="store_true", help="overwrite existing lists, names and .data")
    a = p.parse_args(argv)
    try:
        classes = read_class_names(a.names) if a.names else None
        files = write_voc_labels(a.root, a.out, classes, force=a.force)
    except (DatasetError, OSError) as e:
        print(f"yolov2 labels: error: {e}", file=sys.stderr)
        return 1
    for f in files:
        n = len(read_text(f).splitlines()) if f.suffix == ".txt" else None
        print(f"{f}" + (f": {n} images" if n is not None else ""))
    return 0


