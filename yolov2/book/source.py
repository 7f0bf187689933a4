"""Which data and model the detection chapters (6b, 8, 9) run on: the bundled demo, or the reader's VOC.

By default the chapters run the book's own detector (`yolov2-tiny-synth.cfg` with the committed
`data/yolov2-tiny-synth.weights`) on the synthetic VOC, regenerated with seed 0. A reader who has
the real Pascal VOC and darknet's weights switches all three chapters with environment variables:

    YOLOV2_VOC=path/to/VOCdevkit YOLOV2_WEIGHTS=yolov2-tiny-voc.weights make book

* `YOLOV2_VOC`: a devkit root, the folder that holds `VOC2007/` (with `Annotations/`,
  `JPEGImages/`, `ImageSets/Main/`).
* `YOLOV2_WEIGHTS`: darknet `.weights` for the cfg (required with `YOLOV2_VOC`).
* `YOLOV2_CFG`: a cfg file or a shipped cfg's name; `yolov2-tiny-voc` (VOC's 20 classes) unless set.
* `YOLOV2_IMAGE_SET`: `year:set`, `2007:test` unless set.

The class names are the devkit's `classes.names` when it has one (a synthetic devkit does), else
the `.names` file beside the cfg, else VOC's 20 for a 20-class cfg. Relative paths are taken from
the current directory (the Makefile makes them absolute before the chapters, which run in book/,
see them). Anything wrong is a `SourceError`: one line naming the variable, the path and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from yolov2.darknet.cfg import CfgError, cfg_file, load_cfg
from yolov2.darknet.model import Darknet
from yolov2.darknet.weights import WeightsError
from yolov2.data.darknet_data import dataset_names
from yolov2.data.labels import read_class_names
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.data.voc import VOC_CLASSES, Annotation, DatasetError, parse_annotation, read_image_set

VARIABLES = ("YOLOV2_VOC", "YOLOV2_WEIGHTS", "YOLOV2_CFG", "YOLOV2_IMAGE_SET")
BUNDLED_CFG = "yolov2-tiny-synth"
VOC_CFG = "yolov2-tiny-voc"
SYNTH_SEED = 0  # the seed of the demo model's synthetic VOC (data/README.md)


class SourceError(ValueError):
    """A bad `YOLOV2_*` setting; the message (one line) names the variable, the path and the problem."""


@dataclass(frozen=True)
class BookSource:
    """What a detection chapter runs on.

    cfg, weights: the detector's files. devkit: the reader's devkit root (None for the bundled data,
    which `test_set` generates). names: the class names. year, image_set: the image set evaluated.
    bundled: True for the book's own demo (model and synthetic data), whose numbers the chapters assert.
    """

    cfg: Path
    weights: Path
    devkit: Path | None
    names: tuple[str, ...]
    year: str = "2007"
    image_set: str = "test"
    bundled: bool = True

    def describe(self) -> str:
        """One line saying which data and model a chapter ran on (each chapter prints it)."""
        if self.bundled:
            return (f"data: the bundled synthetic VOC (seed {SYNTH_SEED}, VOC{self.year} {self.image_set}); "
                    f"model: {self.cfg.name} with {self.weights.name}")
        return (f"data: your VOC at {self.devkit} (VOC{self.year} {self.image_set}, {len(self.names)} "
                f"classes); model: {self.cfg.name} with {self.weights}")

    def load_net(self) -> Darknet:
        """The cfg's network with the weights loaded (eval mode); a bad file is a `SourceError`."""
        try:
            net = Darknet(self.cfg)
            net.load_weights(self.weights)
        except (CfgError, WeightsError, OSError) as e:
            what = "YOLOV2_WEIGHTS" if isinstance(e, WeightsError) else "YOLOV2_CFG"
            raise SourceError(f"{what}: {e}" if not self.bundled else str(e)) from None
        return net.eval()

    def test_set(self, n_images: int | None, workdir: str | Path) -> tuple[Path, dict[str, Annotation]]:
        """The devkit root and the annotations of the first `n_images` of the image set (all for None).

        Bundled: the synthetic VOC's test split of `n_images` images, written under `workdir` (image i
        is the same whatever `n_images` is, so these are the images the demo model was evaluated on).
        """
        if self.bundled:
            if n_images is None:
                raise ValueError("the bundled synthetic test set needs a number of images")
            root = make_synthetic_voc(Path(workdir) / "synth", 0, n_images, seed=SYNTH_SEED)
        else:
            root = self.devkit
        try:
            ids = read_image_set(root, self.year, self.image_set)[:n_images]
            folder = root / f"VOC{self.year}" / "Annotations"
            return root, {i: parse_annotation(folder / f"{i}.xml") for i in ids}
        except DatasetError as e:
            raise SourceError(f"YOLOV2_VOC: {e}") from None

    def image_path(self, root: Path, image_id: str) -> Path:
        """`root/VOC{year}/JPEGImages/{image_id}.jpg`, the image darknet's `valid` reads for that id."""
        return Path(root) / f"VOC{self.year}" / "JPEGImages" / f"{image_id}.jpg"


def _path(env: Mapping[str, str], name: str) -> Path:
    return Path(os.path.abspath(Path(env[name].strip()).expanduser()))


def _cfg_classes(cfg: Path) -> int:
    try:
        sections = load_cfg(cfg)
    except (CfgError, OSError) as e:
        raise SourceError(f"YOLOV2_CFG: {e}") from None
    regions = [s for s in sections if s.type == "region"]
    if not regions:
        raise SourceError(f"YOLOV2_CFG={cfg}: no [region] layer (the chapters need a YOLOv2 detector)")
    try:
        return regions[-1].get_int("classes")
    except CfgError as e:
        raise SourceError(f"YOLOV2_CFG: {e}") from None


def _names(devkit: Path, cfg: Path, classes: int) -> tuple[str, ...]:
    try:
        where, names = dataset_names(devkit)
        if names is None and cfg.with_suffix(".names").is_file():
            where, names = str(cfg.with_suffix(".names")), read_class_names(cfg.with_suffix(".names"))
    except DatasetError as e:
        raise SourceError(f"YOLOV2_VOC: {e}") from None
    if names is None:
        if classes != len(VOC_CLASSES):
            raise SourceError(f"YOLOV2_CFG={cfg}: classes={classes}, and neither {devkit / 'classes.names'} "
                              f"nor {cfg.with_suffix('.names')} lists the class names")
        where, names = "VOC's 20 classes", list(VOC_CLASSES)
    if len(names) != classes:
        raise SourceError(f"YOLOV2_CFG={cfg}: classes={classes}, but {where} lists {len(names)} class names")
    return tuple(names)


def book_source(bundled_weights: str | Path, env: Mapping[str, str] | None = None) -> BookSource:
    """The chapters' data and model from the `YOLOV2_*` variables of `env` (default `os.environ`).

    bundled_weights: the demo model's weights (`../data/yolov2-tiny-synth.weights` from book/), used
    when `YOLOV2_VOC` is not set. Raises `SourceError` (one line) for a bad or incomplete setting.
    """
    env = os.environ if env is None else env
    given = {k: env[k] for k in VARIABLES if env.get(k, "").strip()}
    if "YOLOV2_VOC" not in given:
        if given:
            raise SourceError(f"{', '.join(given)} set without YOLOV2_VOC: the chapters switch to other data "
                              "only with YOLOV2_VOC=path/to/VOCdevkit (and YOLOV2_WEIGHTS)")
        return BookSource(cfg_file(BUNDLED_CFG), Path(bundled_weights), None, SYNTH_CLASSES)
    devkit = _path(env, "YOLOV2_VOC")
    if not devkit.is_dir():
        raise SourceError(f"YOLOV2_VOC={devkit}: no such directory (give the VOCdevkit folder that holds "
                          "VOC2007/)")
    year, _, image_set = given.get("YOLOV2_IMAGE_SET", "2007:test").strip().partition(":")
    if not year.isdigit() or not image_set or "/" in image_set:
        raise SourceError(f"YOLOV2_IMAGE_SET={given['YOLOV2_IMAGE_SET']!r}: expected year:set, "
                          "e.g. 2007:test")
    listing = devkit / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        raise SourceError(f"YOLOV2_VOC={devkit}: no {listing.relative_to(devkit)} (is this the VOCdevkit "
                          "folder, the one that holds VOC2007/?)")
    if "YOLOV2_WEIGHTS" not in given:
        raise SourceError("YOLOV2_VOC is set but YOLOV2_WEIGHTS is not: give darknet weights for the cfg "
                          f"({given.get('YOLOV2_CFG', VOC_CFG)})")
    weights = _path(env, "YOLOV2_WEIGHTS")
    if not weights.is_file():
        raise SourceError(f"YOLOV2_WEIGHTS={weights}: no such file")
    cfg_name = given.get("YOLOV2_CFG", VOC_CFG).strip()
    try:
        cfg = cfg_file(cfg_name)
    except CfgError as e:
        raise SourceError(f"YOLOV2_CFG: {e}") from None
    if not cfg.is_file():
        raise SourceError(f"YOLOV2_CFG={cfg}: no such file (nor a shipped cfg of that name)")
    cfg = Path(os.path.abspath(cfg))
    names = _names(devkit, cfg, _cfg_classes(cfg))
    return BookSource(cfg, weights, devkit, names, year, image_set, bundled=False)
