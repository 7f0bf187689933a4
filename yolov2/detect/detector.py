"""Detection with darknet's pre- and post-processing, batched, and the `detect` and `valid` commands.

Reference: darknet `examples/detector.c` (`test_detector`, `validate_detector`), `src/network.c`
(`network_predict`, `get_network_boxes`), `src/image.c` (`letterbox_image`, `draw_detections`).
The pipeline: image -> letterbox (or plain resize) to the network size -> network -> region
activation -> `yolov2.detect.postprocess.detections_from_output` (boxes, letterbox undo, NMS).

Images are (H, W, 3) RGB, uint8 or float32 in [0, 1] (`yolov2.data.image`). The results are
`yolov2.detect.postprocess.Detections`, one per image: **pixel centre-size** boxes of the original image
(darknet's `relative=0` values), with `xyxy` pixel corners and `comp4_corners` VOC's 1-based ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from yolov2.darknet.cfg import CfgError, cfg_file
from yolov2.darknet.model import Darknet
from yolov2.darknet.region import activate
from yolov2.darknet.weights import WeightsError
from yolov2.data.cli import add_data, add_image_set, add_names, option, parser
from yolov2.data.darknet_data import is_data_file, read_data_file, read_image_list
from yolov2.data.image import ImageError, letterbox_image, read_image, resize_image
from yolov2.data.labels import read_class_names
from yolov2.data.voc import VOC_CLASSES, DatasetError, read_image_set
from yolov2.detect.draw import draw_boxes
from yolov2.detect.evaluate import RESULT_PREFIX
from yolov2.detect.postprocess import Detections, detections_from_output
from yolov2.files import write_bytes, write_files, write_text

PRECISIONS = ("fp32", "bf16")  # the forward's number formats (yolov2.darknet.infer); see Detector.forward
NMS_KINDS = ("sort", "obj")


class Detector:
    """Darknet's detection pipeline around a `Darknet` net, batched.

    letterbox: darknet's `letterbox_image` (test/valid), else a plain `resize_image` (the PyTorch
    port's way). thresh: darknet's `-thresh` (.5 for detect, .005 for valid). nms: IoU threshold.
    relative: NMS on relative boxes (test_detector) or on pixel boxes (validate_detector); the two
    differ only at float rounding. nms_kind: `sort` (per class, darknet's default) or `obj`.
    precision: the forward's number format (`fp32`, or `bf16` on CPUs with AMX/AVX512-BF16 and CUDA).
    fused: run `net.fuse(precision)` (batch norm folded, prepacked oneDNN weights on CPU: the same logits,
    faster; the default) instead of `net` itself, which only runs in fp32.
    """

    def __init__(self, net, letterbox: bool = True, thresh: float = 0.5, nms: float = 0.45,
                 relative: bool = True, nms_kind: str = "sort", device: str | torch.device | None = None,
                 precision: str = "fp32", fused: bool = True, names: Sequence[str] | None = None):
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"Detector wraps a Darknet net, got {type(net).__name__}; from files use "
                            "Detector.load(cfg, weights)")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported (choose from {PRECISIONS})")
        if nms_kind not in NMS_KINDS:
            raise ValueError(f"nms_kind {nms_kind!r} is not one of {NMS_KINDS}")
        self.net = net.eval() if device is None else net.eval().to(device)
        self.device = next(net.parameters()).device
        if fused:
            self.net = self.net.fuse(precision)
        elif precision != "fp32":
            raise ValueError(f"precision {precision!r} needs the fused path (fused=True)")
        self.letterbox, self.thresh, self.nms = letterbox, thresh, nms
        self.relative, self.nms_kind, self.precision = relative, nms_kind, precision
        if names is not None and len(names) != net.num_classes:
            raise ValueError(f"{len(names)} class names, but the cfg's [region] has "
                             f"classes={net.num_classes}")
        self.names = list(names) if names is not None else None

    @classmethod
    def load(cls, cfg: str | Path, weights: str | Path, names: str | Path | Sequence[str] | None = None,
             **options) -> Detector:
        """A detector from darknet files: `cfg` (a path or a shipped name such as `yolov2-tiny-synth`),
        `weights` (a darknet `.weights`), `names` (a names file, one class per line, or a list; default:
        the `.names` file beside the cfg, else VOC's 20 for a 20-class cfg).

        options: as the constructor's (thresh .5, nms .45, letterbox, device, precision, ...). Raises
        `DetectorError` naming the file for a bad cfg, weights or names file.
        """
        net = _load_net(str(cfg), str(weights), options.pop("device", None))
        return cls(net, names=_class_names(names, net, cfg), **options)

    @staticmethod
    def read(path: str | Path) -> np.ndarray:
        """An image file -> (H, W, 3) uint8 **RGB** (what the detector takes; `cv2.imread` gives BGR)."""
        return read_image(path)

    def _image(self, x) -> np.ndarray:
        if isinstance(x, (str, Path)):
            return self.read(x)
        if isinstance(x, Tensor):
            raise TypeError("Detector takes image paths or (H, W, 3) RGB numpy arrays, not a tensor; "
                            "run the net itself on an (N, 3, H, W) batch")
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != 3:
            what = f"shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"expected an image path or an (H, W, 3) RGB array, got {what}")
        if x.dtype != np.uint8 and x.dtype != np.float32:
            raise ValueError(f"expected a uint8 (0-255) or float32 (0-1) RGB image, got dtype {x.dtype}")
        return x

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB image, float32 in [0, 1] or uint8 -> (neth, netw, 3) float32 network input."""
        fit = letterbox_image if self.letterbox else resize_image
        return fit(image, self.net.width, self.net.height)

    @torch.no_grad()
    def forward(self, batch: Tensor) -> Tensor:
        """(N, 3, neth, netw) -> activated region output (N, A*(5+C), H, W) float32.

        The one place that knows the precision: other number formats plug in here.
        """
        logits = self.net(batch.to(self.device, torch.float32))
        return activate(logits.float(), self.net.region.num)

    def detect_batch(self, inputs: np.ndarray, sizes: np.ndarray, explain: bool = False) -> list[Detections]:
        """Pre-processed inputs (N, neth, netw, 3) of images sized (N, 2) `(w, h)` -> detections.

        explain: fill `Detections.suppressed` (what NMS removed, by which box, at which IoU)."""
        batch = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
        output = self.forward(batch)
        return detections_from_output(output, self.net.anchors.to(output.device), np.asarray(sizes),
                                      self.net.width, self.net.height, self.thresh, self.nms,
                                      letterbox=self.letterbox, relative=self.relative,
                                      nms_kind=self.nms_kind, explain=explain)

    def __call__(self, images):
        """Detect objects in one image or a list, all in one forward.

        images: an image path, an (H, W, 3) **RGB** array (uint8, or float32 in [0, 1]), or a list of
        them -> `Detections` for one image, a list of `Detections` for a list (also an (N, H, W, 3)
        array). Arrays from `cv2.imread` are BGR: convert them (`Detector.read` reads RGB).
        """
        return self._detect(images, explain=False)

    def explain(self, images):
        """As calling the detector, and each `Detections.suppressed` lists what NMS removed: the
        slot, the classes it lost, the slot whose box removed them and their IoU (`Suppression`).

        The same forward and the same NMS run (which records who suppressed whom): the detections
        are those the call gives.
        """
        return self._detect(images, explain=True)

    def _detect(self, images, explain: bool):
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            return self._detect([images], explain)[0]
        if isinstance(images, Tensor) or (isinstance(images, np.ndarray) and images.ndim != 4):
            return [self._image(images)]  # raises: a tensor is the net's input, an array not an image
        images = [self._image(x) for x in images]
        if not images:
            return []
        sizes = np.array([(im.shape[1], im.shape[0]) for im in images])
        dets = self.detect_batch(np.stack([self.preprocess(im) for im in images]), sizes, explain=explain)
        if self.names is not None:
            for d in dets:
                d.names = self.names
        return dets


def detections_to_json(paths: Sequence[str], dets: Sequence[Detections], class_names: Sequence[str]) -> str:
    """The `detect --json` document: per image its path, size and detections.

    Strict JSON: a number that is not finite (a box whose size overflowed) is written as null.
    """
    doc = [{"image": str(p), "width": d.width, "height": d.height, "detections": d.to_json(class_names)}
           for p, d in zip(paths, dets, strict=True)]
    return json.dumps(_strict(doc), indent=1, allow_nan=False)


def _strict(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


# --------------------------------------------------------------------------- commands

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CommandError(ValueError):
    """A bad argument or input file; the CLI prints it and exits with status 1."""


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _unit(text: str) -> float:
    """A threshold: a finite number from 0 to 1 (NaN would silently pass nothing)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # false for NaN too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _load_net(cfg: str, weights: str, device: str | None) -> Darknet:
    try:
        net = Darknet(cfg)
        net.load_weights(weights)
    except (CfgError, WeightsError, OSError) as e:
        raise CommandError(str(e)) from None
    try:
        return net.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, AssertionError) as e:  # unknown device string, or no such device here
        raise CommandError(f"--device {device}: {e}") from None


def _class_names(names: str | Path | Sequence[str] | None, net: Darknet, cfg: str | Path | None = None,
                 data: str | Path | None = None) -> list[str]:
    """The class list: `names` (a file or a list), else the dataset's own (`data`: classes.names in a
    devkit root, names= in a darknet .data), else a `.names` file beside the cfg, else VOC's 20 when
    the cfg has 20 classes."""
    from yolov2.data.darknet_data import dataset_names

    where = "--names"
    if isinstance(names, (str, Path)):
        where, names = str(names), read_class_names(names)
    elif names is None and data is not None:
        where, names = dataset_names(data)
    if names is None and cfg is not None:
        beside = cfg_file(cfg).with_suffix(".names")
        if beside.is_file():
            where, names = str(beside), read_class_names(beside)
    if names is None:
        if net.num_classes != len(VOC_CLASSES):
            raise CommandError(f"the cfg's [region] has classes={net.num_classes}: give the class names "
                               "(--names FILE, or a dataset whose classes.names or names= lists them)")
        where, names = "VOC's 20 classes", list(VOC_CLASSES)
    names = list(names)
    if len(names) != net.num_classes:
        raise CommandError(f"{where}: {len(names)} class names, but the cfg's [region] has "
                           f"classes={net.num_classes}")
    return names


def _image_paths(inputs: Sequence[str]) -> list[Path]:
    paths = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
            if not found:
                raise CommandError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise CommandError(f"{p}: no such image or folder")
    return paths


def _output_paths(images: Sequence[Path], out: Path, force: bool) -> list[Path]:
    """Where each drawn image goes: out/<name>, PNG unless the input is JPEG or PNG."""
    outs = [out / (p.stem + (p.suffix.lower() if p.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"))
            for p in images]
    inputs = {p.resolve() for p in images}
    seen: dict[Path, Path] = {}
    for src, dst in zip(images, outs, strict=True):
        if dst.resolve() in inputs:
            raise CommandError(f"{dst}: would overwrite an input image; choose another --out folder")
        if dst in seen:
            raise CommandError(f"{src} and {seen[dst]} would both be drawn to {dst}")
        seen[dst] = src
        if dst.exists() and not force:
            raise CommandError(f"{dst}: exists (use --force to overwrite)")
    return outs


def _common_args(p: argparse.ArgumentParser, thresh: float) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--cfg", required=True,
                   help="darknet .cfg (a path, or a shipped name: python -m yolov2 cfgs)")
    g.add_argument("--weights", required=True, help="darknet .weights")
    add_names(g, "; for detect also the .names beside the cfg")
    g = p.add_argument_group("detection")
    g.add_argument("--thresh", type=_unit, default=thresh,
                   help="objectness and probability threshold, 0 to 1")
    g.add_argument("--nms", type=_unit, default=0.45, help="NMS IoU threshold, 0 to 1")
    g.add_argument("--no-letterbox", action="store_true", help="plain resize, as the PyTorch port did")
    g = p.add_argument_group("running")
    option(g, "--batch", type=_positive_int, default=8, help="images per forward")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, or bf16 (CPUs with AMX/AVX512-BF16, CUDA): faster, logits move ~1%%")
    g.add_argument("--no-fuse", action="store_true", help="run the plain model, not net.fuse() (fp32 only)")
    g.add_argument("--force", action="store_true", help="overwrite existing output files")


def _batches(items: Sequence, size: int) -> list:
    return [items[k:k + size] for k in range(0, len(items), size)]


def _run(main, argv: list[str], prog: str) -> int:
    try:
        return main(argv)
    except (CommandError, DatasetError, ImageError, OSError) as e:  # messages name the file
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output file was left half-written", file=sys.stderr)
        return 130


def comp4_for_image_set(detector: Detector, paths: Sequence[Path], class_names: Sequence[str],
                        batch_size: int = 8, ids: Sequence[str] | None = None) -> dict[str, list[str]]:
    """`validate_detector`'s result lines, per class, for images named `<image id>.<ext>`.

    ids: the image ids to write (default each file's stem, darknet's `basecfg`); an image set's ids may
    name subfolders (`sub/000001`), and eval must see the same id.
    The next batch is decoded and letterboxed in a thread while this one runs through the network.
    """
    ids = [q.stem for q in paths] if ids is None else list(ids)
    image_id = dict(zip(paths, ids, strict=True))
    lines: dict[str, list[str]] = {c: [] for c in class_names}

    def load(chunk: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
        images = [read_image(q) for q in chunk]  # uint8: the pre-processing reads it as (float)u8/255.
        sizes = np.array([(im.shape[1], im.shape[0]) for im in images])
        return np.stack([detector.preprocess(im) for im in images]), sizes

    batches = _batches(paths, batch_size)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for k, chunk in enumerate(tqdm(batches, desc="valid", unit="batch", file=sys.stderr)):
            inputs, sizes = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(load, batches[k + 1])
            for q, d in zip(chunk, detector.detect_batch(inputs, sizes), strict=True):
                for c, ls in d.comp4_lines(image_id[q], class_names).items():
                    lines[c] += ls
    return lines


def _detect(argv: list[str]) -> int:
    p = parser("detect", "Detect objects in images (darknet's test_detector), draw them into --out and/or "
               "write JSON.", "python -m yolov2 detect --cfg yolov2-tiny-synth --weights "
               "data/yolov2-tiny-synth.weights data/synthetic/VOC2007/JPEGImages --out drawn/")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="folder for the drawn images")
    g.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the detections as JSON to FILE (--json alone or --json -: print them)")
    add_data(p, required=False, what=" whose class names to use")
    _common_args(p, 0.5)
    args = p.parse_args(argv)
    if not args.out and not args.json:
        print("no --out folder: printing the detections only", file=sys.stderr)
    json_file = Path(args.json) if args.json and args.json != "-" else None
    if json_file is not None:
        if json_file.exists() and not args.force:
            raise CommandError(f"{json_file}: exists (use --force to overwrite)")
        if not json_file.parent.is_dir():
            raise CommandError(f"{json_file.parent}: no such folder for --json")
    paths = _image_paths(args.images)
    outs = _output_paths(paths, Path(args.out), args.force) if args.out else None
    net = _load_net(args.cfg, args.weights, args.device)
    names = _class_names(args.names, net, args.cfg, args.data)
    detector = Detector(net, letterbox=not args.no_letterbox, thresh=args.thresh, nms=args.nms,
                        precision=args.precision, fused=not args.no_fuse)
    if outs:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    batches = _batches(paths, args.batch)
    bar = tqdm(total=len(paths), desc="detect", unit="image", file=sys.stderr, disable=len(batches) < 2)
    for k, chunk in enumerate(batches):
        images = [read_image(q) for q in chunk]
        for i, (q, im, d) in enumerate(zip(chunk, images, detector(images), strict=True)):
            results.append(d)
            if outs:
                _write_image(outs[k * args.batch + i], draw_boxes(im, d, names))
            if not args.json:
                bar.write(f"{q}: {len(d)} detections\n" + "\n".join(d.draw_lines(args.thresh, names)),
                          file=sys.stdout)
        bar.update(len(chunk))
    bar.close()
    if args.json:
        text = detections_to_json([str(q) for q in paths], results, names)
        if json_file is None:
            print(text)
        else:
            write_text(json_file, text + "\n")
            print(f"{len(paths)} images, {sum(len(d.items()) for d in results)} detections -> {json_file}")
    if outs:  # beside printed JSON, on stderr
        print(f"{len(outs)} drawn images -> {args.out}", file=sys.stderr if json_file is None and args.json
              else sys.stdout)
    return 0


def _write_image(path: Path, bgr: np.ndarray) -> None:
    """Encode (in the format of the extension) and write atomically: no half-written picture is left."""
    ok, data = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise CommandError(f"{path}: OpenCV cannot encode a {path.suffix} image")
    write_bytes(path, data.tobytes())


def _valid(argv: list[str]) -> int:
    p = parser("valid", "Write darknet's result files comp4_det_test_<class>.txt for an image set "
               "(validate_detector): a VOC image set, or the valid= list of a darknet .data file.",
               "python -m yolov2 valid --cfg yolov2-tiny-synth --weights data/yolov2-tiny-synth.weights "
               "--data data/synthetic --image-set test --out results/")
    g = p.add_argument_group("data")
    add_data(g)
    add_image_set(g)
    p.add_argument("--out", required=True, help="folder for the result files")
    _common_args(p, 0.005)
    args = p.parse_args(argv)
    paths, ids = dataset_images(args.data, args.year, args.image_set)
    net = _load_net(args.cfg, args.weights, args.device)
    names = _class_names(args.names, net, None, args.data)
    files = [Path(args.out) / f"{RESULT_PREFIX}{c}.txt" for c in names]
    existing = [f for f in files if f.exists()]
    if existing and not args.force:
        raise CommandError(f"{existing[0]}: exists (use --force to overwrite)")
    detector = Detector(net, letterbox=not args.no_letterbox, thresh=args.thresh, nms=args.nms,
                        relative=False,  # validate_detector: pixel boxes (relative=0)
                        precision=args.precision, fused=not args.no_fuse)
    lines = comp4_for_image_set(detector, paths, names, args.batch, ids)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # all or nothing: eval must never read a set of files of which some are cut or from an older run
    write_files({f: "".join(s + "\n" for s in lines[c]) for c, f in zip(names, files, strict=True)})
    print(f"{len(ids)} images, {sum(map(len, lines.values()))} detections -> {args.out}/{RESULT_PREFIX}*.txt")
    return 0


def dataset_images(data: str | Path, year: str, image_set: str) -> tuple[list[Path], list[str]]:
    """The images `valid` runs on and their ids: a VOC image set of a devkit root (ids as listed), or the
    valid= list of a darknet .data file (ids: the file names' stems, darknet's `basecfg`)."""
    if is_data_file(data):
        paths = read_image_list(read_data_file(data).image_list("valid"))
        ids = [q.stem for q in paths]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise CommandError(f"{data}: the valid= list names two images {dup[0]!r} (result files name an "
                               f"image by its file name alone)")
        return paths, ids
    ids = read_image_set(data, year, image_set)
    folder = Path(data) / f"VOC{year}" / "JPEGImages"
    missing = [i for i in ids if not (folder / f"{i}.jpg").is_file()]
    if missing:
        raise CommandError(f"{folder / (missing[0] + '.jpg')}: missing image ({len(missing)} of the "
                           f"{len(ids)} images of {image_set}.txt are missing)")
    return [folder / f"{i}.jpg" for i in ids], ids


def main_detect(argv: list[str]) -> int:
    """`python -m yolov2 detect`: detect, draw into --out, print lines or JSON."""
    return _run(_detect, argv, "yolov2 detect")


def main_valid(argv: list[str]) -> int:
    """`python -m yolov2 valid`: darknet's comp4 result files for a VOC image set."""
    return _run(_valid, argv, "yolov2 valid")
