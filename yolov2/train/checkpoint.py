"""Training checkpoints: atomic writes, validated loads, RNG states, for an exact `--resume`.

Darknet's own reference is `save_weights` every 100 batches to `backup/<cfg>.backup` (examples/
detector.c `train_detector`); a darknet `.weights` keeps only the parameters and `seen`. A PyTorch
checkpoint adds what an *exact* resume needs: optimizer momentum, schedule position, RNG states and
the data order. It holds only tensors and primitive containers so that it loads with
`torch.load(..., weights_only=True)` (no pickled code runs), every field is checked before anything is
loaded from it, and it is written atomically (`yolov2.files`), so a crash or a full disk mid-write
leaves the previous checkpoint intact.

The run directory: `run.json` records the run's settings and the files the run writes there; `--force`
deletes those files only (:func:`prepare_run_dir`), never one the run did not write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from yolov2.darknet.cfg import parse_cfg
from yolov2.files import (
    atomic_write,
    read_text,
    remove_stale_temps,
    write_bytes,
    write_error,
    write_text,
)
from yolov2.train.schedule import POLICIES, Schedule
from yolov2.train.settings import settings_problem

FORMAT = "yolov2-train-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "fingerprint", "model", "optimizer", "seen", "step", "rng", "progress",
            "settings")
# the arithmetic of the forwards a checkpoint's run made: float32, or the autocast dtype under --amp
# (`precision`; a checkpoint from before it was recorded has none, and its resume is not checked)
PRECISIONS = ("float32", "bfloat16", "float16")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, not ours, or for another network."""


def cfg_fingerprint(cfg_path: str | Path) -> str:
    """sha256 of a cfg's layer sections (not `[net]`): what a checkpoint's tensors depend on.

    Parsed, so comments and whitespace do not matter; `[net]` is left out because its training keys
    (batch, rates) are recorded in the checkpoint's settings instead.
    """
    h = hashlib.sha256()
    for sec in parse_cfg(cfg_path):
        if sec.type in ("net", "network"):
            continue
        h.update(f"[{sec.type}]\n".encode())
        for key in sorted(sec.options):
            h.update(f"{key}={sec.options[key]}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is in use)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save / load


def atomic_save(obj: dict, path: str | Path) -> Path:
    """torch.save to `path` atomically (`yolov2.files.atomic_write`): the previous file survives any failure.

    A full disk is one WriteError line ("no space left on device writing ...; the previous checkpoint.pt
    is intact"), not torch's `inline_container.cc` RuntimeError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def make_checkpoint(*, fingerprint: str, model: dict, optimizer: dict, seen: int, step: int,
                    progress: dict, settings: dict, scaler: dict | None = None,
                    precision: str = "float32") -> dict:
    """The checkpoint dict (every value a tensor or primitive container).

    progress: where the run stands besides `seen` and `step` (data order: sampler epoch and batch
    index; running averages); settings: the resolved run settings (:func:`yolov2.train.command.train`);
    precision: one of :data:`PRECISIONS`, what the forwards computed in (:func:`runtime.precision`).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "model": model,
            "optimizer": optimizer, "scaler": scaler or {}, "seen": int(seen), "step": int(step),
            "rng": rng_state(), "progress": dict(progress), "settings": dict(settings),
            "precision": precision}


def load_checkpoint(path: str | Path, fingerprint: str, model_state: dict) -> dict:
    """Read and fully validate a checkpoint before anything is loaded from it.

    fingerprint: :func:`cfg_fingerprint` of the cfg being trained; model_state: that model's
    `state_dict()` (keys and shapes must match). Every other field is checked for its type and range
    (counters, data position, RNG states, settings); the optimizer's tensors are checked against the
    optimizer built for the run (:func:`check_optimizer_state`). Raises CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code refused by weights_only...
        raise CheckpointError(f"{path}: corrupt or not a yolov2 checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a yolov2 training checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')}, this code reads {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    for key, kind in (("settings", dict), ("progress", dict), ("rng", dict), ("optimizer", dict),
                      ("scaler", dict), ("model", dict), ("fingerprint", str)):
        if not isinstance(ckpt.get(key, {}), kind):
            raise CheckpointError(f"{path}: '{key}' is a {type(ckpt[key]).__name__}, not a {kind.__name__}")
    if ckpt["fingerprint"] != fingerprint:
        cfg = ckpt["settings"].get("cfg", "?")
        raise CheckpointError(f"{path}: written for another network (cfg {cfg}); its layers differ "
                              f"from this cfg's. Use that cfg, or a new run directory.")
    _check_model_state(path, ckpt["model"], model_state)
    _check_counters(path, ckpt)
    _check_rng(path, ckpt["rng"])
    scaler = ckpt["scaler"]  # empty unless float16 autocast on CUDA
    if scaler and (set(scaler) != SCALER or not all(_number(v, float) and v >= 0 for v in scaler.values())):
        raise CheckpointError(f"{path}: corrupt gradient-scaler state {sorted(scaler)}")
    if "precision" in ckpt and ckpt["precision"] not in PRECISIONS:
        raise CheckpointError(f"{path}: precision {ckpt['precision']!r} is not one of "
                              f"{', '.join(PRECISIONS)}")
    problem = settings_problem(ckpt["settings"])
    if problem:
        raise CheckpointError(f"{path}: bad settings: {problem}")
    return ckpt


def _check_model_state(path: Path, saved: dict, expected: dict) -> None:
    if not isinstance(saved, dict) or set(saved) != set(expected):
        extra = sorted(set(saved) - set(expected))[:3] if isinstance(saved, dict) else []
        lost = sorted(set(expected) - set(saved))[:3] if isinstance(saved, dict) else []
        raise CheckpointError(f"{path}: model tensors do not match this network (unexpected {extra}, "
                              f"missing {lost})")
    for key, t in expected.items():
        s = saved[key]
        if not isinstance(s, torch.Tensor) or s.shape != t.shape:
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise CheckpointError(f"{path}: '{key}' has shape {shape}, this network needs {tuple(t.shape)}")
        if s.dtype.is_floating_point != t.dtype.is_floating_point:
            raise CheckpointError(f"{path}: '{key}' is {s.dtype}, this network needs {t.dtype}")


SCALER = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}  # GradScaler's
# what Trainer.save puts in `progress`: key -> (type, smallest value)
PROGRESS = {"epoch": (int, 0), "batch_in_epoch": (int, 0), "avg_loss": (float, -1.0), "elapsed": (float, 0.0),
            "seen_start": (int, 0), "n_images": (int, 1), "schedule": (dict, None)}


def _number(value, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_counters(path: Path, ckpt: dict) -> None:
    """seen, step and the data position: integers (or finite numbers) that are not negative."""
    for key in ("seen", "step"):
        if not _number(ckpt[key], int) or ckpt[key] < 0:
            raise CheckpointError(f"{path}: '{key}' is {ckpt[key]!r}, not a count (an integer >= 0)")
    p = ckpt["progress"]
    missing = [k for k in PROGRESS if k not in p]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, progress lacks {missing}")
    for key, (kind, low) in PROGRESS.items():
        v = p[key]
        ok = isinstance(v, dict) if kind is dict else _number(v, kind) and v >= low
        if not ok:
            what = ("a dict" if kind is dict
                    else f"{'an integer' if kind is int else 'a finite number'} >= {low}")
            raise CheckpointError(f"{path}: progress '{key}' is {v!r}, expected {what}")
    if p["seen_start"] > ckpt["seen"]:
        raise CheckpointError(f"{path}: progress 'seen_start' {p['seen_start']} is beyond seen "
                              f"{ckpt['seen']}")
    problem = _schedule_problem(p["schedule"])
    if problem:
        raise CheckpointError(f"{path}: bad learning-rate schedule in the checkpoint ({problem})")


def _schedule_problem(d: dict) -> str | None:
    """What is wrong with a saved Schedule's fields (names, types, the policy), or None."""
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    fields = {f.name: str(f.type) for f in dataclasses.fields(Schedule)}
    if set(d) != set(fields):
        return f"fields {sorted(set(d) ^ set(fields))}"
    for name, kind in fields.items():
        v = d[name]
        if kind.startswith("tuple"):
            item = kinds[kind[6:].split(",")[0]]
            ok = isinstance(v, (list, tuple)) and all(_number(x, item) for x in v)
        elif kind in ("bool", "str"):
            ok = isinstance(v, kinds[kind])
        else:
            ok = _number(v, kinds[kind])
        if not ok:
            return f"{name}={v!r}"
    if d["policy"] not in POLICIES or len(d["scales"]) < len(d["steps"]):
        return f"policy {d['policy']!r} with {len(d['steps'])} steps, {len(d['scales'])} scales"
    return None


def _check_rng(path: Path, state: dict) -> None:
    """Each generator state must restore (on throwaway generators, so nothing changes here)."""
    try:
        version, internal, gauss = state["python"]
        random.Random().setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.Generator().set_state(state["torch"])
        cuda = state.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) for t in cuda):
            raise TypeError("CUDA states are not tensors")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: corrupt random-generator state ({type(e).__name__}: {e})") from None


def check_optimizer_state(path: str | Path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state fits `optimizer`: same groups and parameters, every tensor its shape."""
    expected = optimizer.state_dict()
    groups, state = saved.get("param_groups"), saved.get("state")
    if (not isinstance(groups, list) or not isinstance(state, dict)
            or len(groups) != len(expected["param_groups"])):
        raise CheckpointError(f"{path}: the optimizer state does not fit this run's optimizer "
                              f"({len(expected['param_groups'])} parameter groups)")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for k, (g, e) in enumerate(zip(groups, expected["param_groups"], strict=True)):
        if not isinstance(g, dict) or set(g) != set(e) or g["params"] != e["params"]:
            raise CheckpointError(f"{path}: optimizer parameter group {k} does not fit this run's optimizer")
        bad = [key for key, v in g.items() if key != "params" and not isinstance(v, type(e[key]))
               and not (_number(v, float) and _number(e[key], float))]
        if bad:
            raise CheckpointError(f"{path}: optimizer parameter group {k}: bad value for {bad[0]!r}")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CheckpointError(f"{path}: optimizer state for a parameter {index!r} this network lacks")
        for name, t in entry.items():
            if t is not None and (not isinstance(t, (torch.Tensor, int, float)) or isinstance(t, bool)):
                raise CheckpointError(f"{path}: optimizer state '{name}' of parameter {index} is a "
                                      f"{type(t).__name__}")
            if isinstance(t, torch.Tensor) and t.dim() and t.shape != params[index].shape:  # momentum...
                raise CheckpointError(f"{path}: optimizer state '{name}' of parameter {index} has shape "
                                      f"{tuple(t.shape)}, the parameter {tuple(params[index].shape)}")


# --------------------------------------------------------------------------- the run directory

CHECKPOINT, LOG, PLOT, SETTINGS, EVAL = "checkpoint.pt", "log.csv", "loss.png", "run.json", "eval.json"
STATE = (CHECKPOINT, LOG, SETTINGS)  # a folder holding one of these holds a run


def run_outputs(cfg: str | Path) -> list[str]:
    """The files a run of `cfg` writes in its folder (`eval.json` is recorded when written)."""
    stem = Path(cfg).stem
    return [SETTINGS, LOG, CHECKPOINT, f"{stem}_last.weights", f"{stem}_final.weights", PLOT]


def recorded_files(out: str | Path) -> list[str]:
    """The files a run recorded in `out/run.json` as its own (none if there is no readable record).

    A run.json of an earlier version (settings only) records the files every run of its cfg writes.
    """
    try:
        record = json.loads(read_text(Path(out) / SETTINGS))
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict):
        return []
    names = record.get("files")
    if names is None and isinstance(record.get("cfg"), str):
        names = [*run_outputs(record["cfg"]), EVAL]
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")]


def write_run_record(out: str | Path, settings: dict, files: list[str]) -> Path:
    """`run.json`: the run's settings and the files it writes there (added to those already recorded)."""
    names = list(dict.fromkeys([*recorded_files(out), *files]))
    return write_text(Path(out) / SETTINGS, json.dumps({**settings, "files": names}, indent=1) + "\n")


def record_file(out: str | Path, name: str) -> None:
    """Add `name` (written by the run, e.g. eval.json) to the files run.json records."""
    path = Path(out) / SETTINGS
    try:
        record = json.loads(read_text(path))
    except (OSError, ValueError):
        return
    if isinstance(record, dict):
        record["files"] = list(dict.fromkeys([*recorded_files(out), name]))
        write_text(path, json.dumps(record, indent=1) + "\n")


def prepare_run_dir(out: str | Path, resume: bool, force: bool, keep: Iterable[str | Path | None] = (),
                    writes: Iterable[str] = ()) -> list[Path]:
    """Make `out` ready for a run; returns the files deleted.

    resume: `out` must hold a checkpoint. Otherwise `out` must be new or empty, or `force` given: a
    folder that holds a run or anything else is refused without it. With `force` only the files a
    run recorded in its run.json are deleted; every other file stays, and so do the files in `keep`
    (the run's --weights, --pretrained, cfg, names), which must not be among `writes` either (the
    files this run will write there). In both cases the temporary files of a write that was cut
    (`.<name>.<pid>.tmp`) are removed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise CheckpointError(f"{out}: nothing to resume (no {CHECKPOINT})")
        return remove_stale_temps(out)
    keep, writes = {Path(k).resolve() for k in keep if k}, set(writes)
    clash = sorted(p for p in keep if p.parent == out.resolve() and p.name in writes)
    if clash:
        raise CheckpointError(f"{clash[0]}: this run would overwrite it (it writes {clash[0].name} in "
                              f"{out}); copy it elsewhere or choose another --out")
    removed = remove_stale_temps(out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not force:
        run = [f for f in STATE if f in entries]
        if run:
            raise CheckpointError(f"{out}: already holds a run ({', '.join(run)}); pass --resume to continue "
                                  f"it or --force to start over (which deletes only the run's own files)")
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise CheckpointError(f"{out}: holds files that are not a run's ({shown}); train into a new or empty "
                              f"folder, or pass --force (which leaves them where they are)")
    for name in recorded_files(out):
        f = out / name
        if (f.is_file() or f.is_symlink()) and f.resolve() not in keep:
            f.unlink()
            removed.append(f)
    out.mkdir(parents=True, exist_ok=True)
    return removed


class LogFile:
    """The per-iteration CSV log, open for appending: each row reaches the file when written, and a
    failed write (a full disk) is one WriteError line naming the log."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._f = open(path, "a", buffering=1)  # line-buffered
        except OSError as e:
            raise write_error(e, path, "the log is unchanged") from None

    def write(self, row: str) -> None:
        try:
            self._f.write(row)
        except OSError as e:
            raise write_error(e, self.path, "the rows before this one are intact") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def open_log(path: Path, fields: tuple[str, ...], step: int,
             older: tuple[tuple[str, ...], ...] = ()) -> LogFile:
    """The per-iteration CSV log, for appending; on resume only the rows up to `step` are kept.

    The kept rows are written atomically first (a crash while rewriting loses nothing), then the file
    is opened for appending. A log that is not this run's (another header, a row that is not numbers)
    is a CheckpointError naming the file and line. older: the headers of older versions of the log,
    each a prefix of `fields` (the columns added since come last); such a log continues under
    today's header, its rows' new columns `nan`.
    """
    kept = _rows_up_to(path, fields, step, older) if step and path.exists() else []
    write_text(path, ",".join(fields) + "\n" + "".join(r + "\n" for r in kept))
    return LogFile(path)


def _rows_up_to(path: Path, fields: tuple[str, ...], step: int,
                older: tuple[tuple[str, ...], ...] = ()) -> list[str]:
    try:
        lines = read_text(path, CheckpointError).splitlines()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read training log: {e.strerror or e}") from None
    head = tuple(lines[0].split(",")) if lines else ()
    if head not in (fields, *(h for h in older if fields[:len(h)] == h)):
        first = lines[0][:60] if lines else ""
        raise CheckpointError(f"{path}:1: not this trainer's log (header {first!r}); move it away to "
                              f"resume (the checkpoint is intact)")
    pad = "".join(",nan" for _ in fields[len(head):])  # an older log's rows: nan in the new columns
    kept = []
    for n, row in enumerate(lines[1:], 2):
        values = row.split(",")
        if len(values) != len(head):  # a run killed mid-write may leave a cut last line
            if n == len(lines):
                continue
            raise CheckpointError(f"{path}:{n}: expected {len(head)} comma-separated fields, got "
                                  f"{len(values)}; move the log away to resume (the checkpoint is intact)")
        try:
            at = int(values[0])
            [float(v) for v in values]
        except ValueError:
            raise CheckpointError(f"{path}:{n}: not a number in {row[:60]!r}; move the log away to "
                                  f"resume (the checkpoint is intact)") from None
        if at <= step:
            kept.append(row + pad)
    return kept


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """A run's `log.csv` (or its run directory) -> {column: array}, one entry per iteration."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG
    try:
        lines = read_text(path, CheckpointError).splitlines()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read training log: {e.strerror or e}") from None
    if not lines:
        raise CheckpointError(f"{path}: empty training log")
    head = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:] if ln]
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(head)]
    if bad:
        raise CheckpointError(f"{path}:{bad[0]}: expected {len(head)} comma-separated fields")
    try:
        return {h: np.array([float(r[k]) for r in rows]) for k, h in enumerate(head)}
    except ValueError as e:
        raise CheckpointError(f"{path}: not a number in the log ({e})") from None


def plot_log(log: dict, path: str | Path) -> Path | None:
    """Loss (with darknet's running average) and Avg IOU / Avg Recall per batch, saved as a PNG
    (atomically)."""
    if not len(log.get("batch", ())):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(log["batch"], log["loss"], lw=0.6, alpha=0.4, label="loss per image")
    ax.plot(log["batch"], log["avg_loss"], lw=1.5, label="darknet's avg (.9/.1)")
    ax.set(xlabel="batch", ylabel="loss", yscale="log")
    ax.legend()
    ax2.plot(log["batch"], log["avg_iou"], label="Avg IOU")
    ax2.plot(log["batch"], log["avg_recall"], label="Avg Recall")
    ax2.set(xlabel="batch", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return write_bytes(path, png.getvalue())
