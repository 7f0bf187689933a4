"""Training: darknet's `train_detector` loop in PyTorch, on one device or on several with DDP.

Reference: darknet examples/detector.c (`train_detector`, and `validate_detector` for the mAP
afterwards), src/network.c (`train_networks` for `-gpus`).

This module is the public face of training: :func:`train` (one run, start to finish), :func:`voc_map`
and the `python -m yolov2 train` command line. The loop itself is :class:`yolov2.train.trainer.Trainer`,
the run's settings and recipes :mod:`yolov2.train.settings`, devices and ranks :mod:`yolov2.train.runtime`;
their public names are imported here too, so `from yolov2.train.command import Trainer, Settings` works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from yolov2.darknet.cfg import CfgError
from yolov2.darknet.model import Darknet
from yolov2.data.cli import HelpFormatter
from yolov2.data.darknet_data import annotations_from_records, is_data_file, load_split
from yolov2.data.image import load_image
from yolov2.data.voc import check_image_size
from yolov2.detect.detector import Detector
from yolov2.detect.evaluate import evaluate_detections, load_annotations
from yolov2.detect.postprocess import results_from_detections
from yolov2.files import read_text, write_text
from yolov2.train.checkpoint import (
    EVAL,
    SETTINGS,
    CheckpointError,
    prepare_run_dir,
    read_log,
    record_file,
    recorded_files,
    run_outputs,
)
from yolov2.train.runtime import Runtime, init_runtime
from yolov2.train.settings import (
    RECIPES,
    Settings,
    TrainError,
    TrainResult,
    cfg_path,
    class_names,
    make_schedule,
    parse_sets,
    parse_sizes,
    parse_steps,
    resolve,
    training_batch,
)
from yolov2.train.trainer import Trainer, json_dumps

__all__ = ["RECIPES", "Runtime", "Settings", "TrainError", "TrainResult", "Trainer", "main", "make_schedule",
           "read_log", "resolve", "train", "training_batch", "voc_map"]


def train(cfg: str | Path, data: str | Path, out_dir: str | Path, *, recipe: str | None = None,
          loader: str | None = None, sets: list | None = None, names: str | None = None,
          max_batches: int | None = None, batch: int | None = None, subdivisions: int | None = None,
          sizes: list[int] | None = None, learning_rate: float | None = None, seed: int | None = None,
          weights: str | None = None, pretrained: str | None = None, partial: int | None = None,
          clear: bool | None = None, checkpoint_every: int | None = None, final_batches: int | None = None,
          unsigned_steps: bool | None = None, steps: list[int] | None = None,
          device: str | None = None, workers: int | None = None, resume: bool = False,
          force: bool = False, progress: bool = True, amp: bool | None = None, new_precision: bool = False,
          eval_set: str | None = None, banner: bool = False) -> TrainResult:
    """Train `cfg` on the VOC-layout dataset at `data`, writing the run to `out_dir`.

    Writes `checkpoint.pt` (every `checkpoint_every` iterations, default 100, and at the end),
    `<cfg>_final.weights` (darknet format), `log.csv` (one row per iteration, :func:`read_log`; the
    loss per image and its split by rule, `loss_coord` ... `loss_class`: region_loss.rule_parts), `loss.png`
    and `run.json` (the settings, and the files the run writes: `force` deletes those only). A setting left
    None takes the recipe's or the cfg's value (recipe `darknet`, seed 0, final_batches 200).
    `resume=True` continues the run in `out_dir` exactly, with the settings it was started with: a setting
    given too must equal the run's, except `max_batches` (train further) and `checkpoint_every`.
    unsigned_steps: the final darknet's rate quirk (a negative step never passes; see
    :class:`yolov2.train.schedule.Schedule`), for a run that must match that darknet's rates.
    steps: the batch numbers of the cfg's `policy=steps` in place of its `steps=` (as many as its
    `scales=`), e.g. to stretch them with a longer `max_batches`.
    eval_set (`2007:test`): afterwards, rank 0 measures the VOC07 mAP there (:func:`voc_map`, at the
    cfg's width) and writes `eval.json`. banner: print :func:`start_banner` first (the command does).
    new_precision: with `resume`, continue in this run's precision (`amp`) although the checkpoint
    was written in another (refused otherwise, :func:`yolov2.train.runtime.check_resume_precision`).
    """
    given = dict(recipe=recipe, loader=loader, sets=[list(p) for p in sets] if sets else None, names=names,
                 max_batches=max_batches, batch=batch, subdivisions=subdivisions,
                 sizes=list(sizes) if sizes else None, learning_rate=learning_rate, seed=seed,
                 weights=weights, pretrained=pretrained, partial=partial, clear=clear,
                 checkpoint_every=checkpoint_every, final_batches=final_batches,
                 unsigned_steps=unsigned_steps, steps=list(steps) if steps is not None else None)
    unset = {f.name: None for f in dataclasses.fields(Settings)[2:]} if resume else {}
    s = Settings(str(cfg_path(cfg)), str(data), **(unset | {k: v for k, v in given.items() if v is not None}))
    rt = init_runtime(device, workers, progress, amp, new_precision)
    out = Path(out_dir)
    try:
        if rt.main:  # the files the run reads must survive --force, and it must not write over them
            prepare_run_dir(out, resume, force, keep=[weights, pretrained, s.cfg, names],
                            writes=run_outputs(s.cfg))
        if rt.world > 1:
            dist.barrier()
        trainer = Trainer(s, rt, out, resume)
        if rt.main and banner:
            print(start_banner(trainer, resume), flush=True)
        result = trainer.run()
        if eval_set and rt.main:
            result.map = evaluate_run(result, eval_set, rt.device, progress)
        return result
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def start_banner(trainer: Trainer, resume: bool = False) -> str:
    """What a run is about to do: model, data, device and precision, recipe and schedule, and darknet's
    final-size rule when it applies."""
    s, rt, net = trainer.s, trainer.rt, trainer.net
    params = sum(p.numel() for p in net.parameters())
    names = trainer.dataset.classes if trainer.dataset is not None else []
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    precision = {None: "float32"}.get(rt.amp_dtype, f"{str(rt.amp_dtype).split('.')[-1]} autocast")
    sizes = f"{s.sizes[0]}" if len(s.sizes) == 1 else f"{min(s.sizes)}-{max(s.sizes)} (every {s.every})"
    lines = [f"{'resuming' if resume else 'training'} {Path(s.cfg).stem}: {len(net.layers)} layers, "
             f"{params / 1e6:.2f}M parameters, {net.region.classes} classes ({shown})",
             f"data: {s.data}: {trainer.n_images} images",
             f"device: {rt.device} ({rt.world} rank{'s' if rt.world > 1 else ''}), {precision}",
             f"recipe: {s.recipe}, batch {s.batch} / subdivisions {s.subdivisions}, to batch {s.max_batches} "
             f"(from {trainer.batch_num}), sizes {sizes}, seed {s.seed or 0}"]
    sch = trainer.schedule
    rate = f"rate {sch.learning_rate:g}, policy {sch.policy}"
    if sch.policy == "steps":
        rate += " (x" + ", x".join(f"{c:g} at {b}" for b, c in zip(sch.steps, sch.scales, strict=True)) + ")"
    if sch.burn_in:
        rate += f", burn_in {sch.burn_in}"
    lines.append(rate)
    if trainer.darknet and len(s.sizes) > 1 and s.final_batches:
        lines.append(f"darknet's final-size rule: the last {s.final_batches} batches (after batch "
                     f"{max(0, s.max_batches - s.final_batches)}) run at the largest size, {max(s.sizes)} "
                     f"(--final-batches 0: off)")
    return "\n".join(lines)


def eval_images(data: str | Path, image_set: str, names: list[str]):
    """(ids, image paths, annotations) of the image set `YEAR:SET` of a VOC devkit, or of the valid= list
    of a darknet .data file (ids: the file names' stems)."""
    if is_data_file(data):
        records = load_split(data, "valid", len(names))
        annotations = annotations_from_records(records, names)
        return list(annotations), [Path(r.image_path) for r in records], annotations
    (year, iset), = parse_sets(image_set)
    annotations = load_annotations(data, year, iset)
    folder = Path(data) / f"VOC{year}" / "JPEGImages"
    return list(annotations), [folder / f"{i}.jpg" for i in annotations], annotations


def voc_map(net, data: str | Path, image_set: str = "2007:test", names: list[str] | None = None,
            size: int | None = None, device: str | torch.device | None = None, batch_size: int = 16,
            progress: bool = False):
    """VOC07 mAP (a `yolov2.detect.evaluate.EvalResult`) of `net` on a VOC image set (or a darknet .data
    file's valid= list), as darknet's `valid` sees it (letterbox, thresh .005, NMS .45 on pixel boxes) at
    `size` (default: the cfg's width)."""
    names = names or class_names(Path(data))
    ids, paths, annotations = eval_images(data, image_set, names)
    width, height = net.width, net.height
    net.width = net.height = size or width  # the network runs at any multiple of 32
    try:
        detector = Detector(net, thresh=0.005, relative=False, device=device)
        dets = {}
        starts = range(0, len(ids), batch_size)
        for k in tqdm(starts, desc="eval", unit="batch", file=sys.stderr, disable=not progress):
            chunk = ids[k:k + batch_size]
            images = [load_image(q) for q in paths[k:k + batch_size]]
            for i, im, q in zip(chunk, images, paths[k:k + batch_size], strict=True):
                check_image_size(annotations[i], im, q)
            dets.update(zip(chunk, detector(images), strict=True))
    finally:
        net.width, net.height = width, height
    return evaluate_detections(annotations, results_from_detections(dets, names), names, "voc07")


def evaluate_run(result: TrainResult, eval_set: str, device: torch.device, progress: bool = False) -> float:
    """mAP of a finished run's final weights on `eval_set`; writes `eval.json` beside them."""
    s = json.loads(read_text(result.out_dir / SETTINGS))
    net = Darknet(s["cfg"])
    net.load_weights(result.weights)
    ev = voc_map(net, s["data"], eval_set, class_names(Path(s["data"]), s["names"]), device=device,
                 progress=progress)
    summary = {"image_set": eval_set, "metric": "voc07", **ev.to_json()}
    write_text(result.out_dir / EVAL, json_dumps(summary))
    record_file(result.out_dir, EVAL)
    return ev.map


def _arg(parse: Callable[[str], list]) -> Callable[[str], list]:
    """An argparse `type` that shows the parser's own message for a bad value."""
    def wrapped(text: str) -> list:
        try:
            return parse(text)
        except TrainError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return wrapped


def _number(kind: type, low: float, what: str) -> Callable[[str], float]:
    """An argparse `type`: a finite `kind` (int or float) >= low, else the parser's message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (kind is float and low == 0 and value == 0):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


COUNT, SIZE, RATE = _number(int, 1, "an integer >= 1"), _number(int, 0, "an integer >= 0"), \
    _number(float, 0, "a finite number > 0")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m yolov2 train", description=__doc__.split("\n")[0], formatter_class=HelpFormatter,
        epilog="example:\n  python -m yolov2 train --cfg yolov2-tiny-synth --data data/synthetic "
               "--out runs/demo --sizes 192-256 --device cpu --eval 2007:test\n"
               "several GPUs: torchrun --nproc_per_node=K -m yolov2 train ...")
    p.add_argument("cfg_arg", nargs="?", metavar="CFG", help="the same as --cfg (the older spelling)")
    p.add_argument("data_arg", nargs="?", metavar="DATA", help="the same as --data (the older spelling)")
    p.add_argument("--cfg", help="darknet .cfg (a path, or a shipped name: python -m yolov2 cfgs)")
    p.add_argument("--data", help="a VOC devkit root (holds VOC2007/, VOC2012/) or a darknet .data file "
                   "(its train= list)")
    p.add_argument("--out", required=True, help="run directory (checkpoint, weights, log)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="darknet (default) or adam")
    p.add_argument("--loader", choices=("detection", "region"),
                   help="augmentation: darknet's load_data_detection or the port's crop-jitter loader")
    p.add_argument("--sets", type=_arg(parse_sets), help="image sets, default 2007:trainval,2012:trainval "
                   "(only those present)")
    p.add_argument("--names", "--classes", dest="names", metavar="FILE", help="class names file (default: "
                   "the dataset's own, classes.names in a devkit root or names= in a .data, else VOC's 20)")
    p.add_argument("--max-batches", type=COUNT, help="stop at this darknet batch number (with --resume: "
                   "train a run further)")
    p.add_argument("--batch", type=COUNT, help="images per update (darknet's batch; per GPU for darknet)")
    p.add_argument("--subdivisions", type=COUNT, help="forwards per update (gradient accumulation)")
    p.add_argument("--sizes", type=_arg(parse_sizes), help="training sizes: 416, 256,288 or 320-608 "
                   "(default: 320-608 with [region] random=1, else the cfg's width)")
    p.add_argument("--lr", type=RATE, dest="learning_rate", help="base learning rate")
    p.add_argument("--seed", type=int, help="seed of every random number of the run (default 0)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", help="start from a full darknet .weights (keeps its seen)")
    start.add_argument("--pretrained", help="start from a darknet backbone (with --partial N)")
    p.add_argument("--partial", type=SIZE, help="load only the layers before N from --pretrained")
    p.add_argument("--clear", action="store_true", default=None,
                   help="reset seen to 0 after loading --weights")
    p.add_argument("--checkpoint-every", type=COUNT, help="iterations between checkpoints (default 100)")
    p.add_argument("--final-batches", type=SIZE,
                   help="train the last N batches at the largest size, as darknet (default 200; 0: off)")
    p.add_argument("--unsigned-steps", action="store_true", default=None,
                   help="the final darknet's rates: it compares steps as unsigned, so a step of -1 never "
                   "passes and steps=-1,100,... trains at the base rate (default: the cfg's warm-up)")
    p.add_argument("--steps", type=_arg(parse_steps), metavar="N,N,...",
                   help="the batch numbers of the cfg's policy=steps in place of its steps= (one per scale "
                   "of its scales=), e.g. with a longer --max-batches")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--workers", type=SIZE, help="data loader processes per rank")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly (its settings; "
                   "--max-batches and --checkpoint-every may change, other options must equal the run's)")
    p.add_argument("--force", action="store_true", help="train in an --out that is not empty: deletes only "
                   "the files an earlier run recorded in its run.json, never other files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16/fp16 autocast on CUDA (the default there), bf16 autocast and "
                   "channels_last on a CPU with AVX512-BF16 or AMX (off by default: float32, darknet's "
                   "arithmetic); --no-amp: float32 everywhere")
    p.add_argument("--new-precision", action="store_true", help="with --resume: continue the run in this "
                   "precision (--amp/--no-amp, the device's) although its checkpoint was written in another "
                   "(refused without it: the continuation is then not the run's own arithmetic)")
    p.add_argument("--eval", dest="eval_set", metavar="YEAR:SET",
                   help="afterwards, the VOC07 mAP on this image set (e.g. 2007:test; for a .data file "
                   "its valid= list, whatever the value)")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("cfg", "data"):  # the positionals are the older spelling of --cfg and --data
        given = getattr(args, name + "_arg")
        if given is not None and getattr(args, name) is not None:
            parser.error(f"the {name} is given twice (positional and --{name}): give --{name} only")
        setattr(args, name, getattr(args, name) or given)
        if getattr(args, name) is None:
            parser.error(f"--{name} is required")
    kw = {k: v for k, v in vars(args).items() if k not in ("cfg_arg", "data_arg")}
    out, progress, amp = kw.pop("out"), not kw.pop("no_progress"), kw.pop("amp")
    if (kw["pretrained"] is None) != (kw["partial"] is None):
        print("train: --pretrained and --partial go together", file=sys.stderr)
        return 2
    try:
        r = train(out_dir=out, progress=progress, amp=amp, banner=True, **kw)
    except (TrainError, CheckpointError, CfgError, ValueError, OSError) as e:
        print(f"train: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # TrainInterrupted says at which batch
        print(f"train: {str(e) or 'interrupted; continue with --resume once a checkpoint was written'}",
              file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained to batch {r.batches} (seen {r.seen}) in {r.elapsed:.1f} s, "
              f"{r.images_per_s:.1f} images/s\nweights: {r.weights}\nlog: {r.log}")
        if r.map is not None:
            print(f"mAP (VOC07) on {args.eval_set}: {r.map:.4f}")
        written = [Path(out) / f for f in recorded_files(out) if (Path(out) / f).is_file()]
        print("files written: " + ", ".join(str(f) for f in written))
    return 0


def one_line(e: BaseException) -> str:
    """An error's message; for one re-raised from a DataLoader worker, the original message only
    (torch appends the worker's traceback to it)."""
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
