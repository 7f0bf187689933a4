"""Training checkpoints: atomic writes, validated loads, RNG states, for an exact `--resume`.

Darknet's own reference is `save_weights` every 100 batches to `backup/<cfg>.backup` (examples/
detector.c `train_detector`); a darknet `.weights` keeps only the parameters and `seen`. A PyTorch
checkpoint adds what an *exact* resume needs: optimizer momentum, schedule position, RNG states and
the data order. It holds only tensors and primitive containers so that it loads with
`torch.load(..., weights_only=True)` (no pickled code runs), and it is written to a temporary file
then renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from yolov2.darknet.cfg import parse_cfg

FORMAT = "yolov2-train-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "fingerprint", "model", "optimizer", "seen", "step", "rng", "progress",
            "settings")


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
    """torch.save to a temporary file in the same folder, fsync, then os.replace onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform/filesystem; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_checkpoint(*, fingerprint: str, model: dict, optimizer: dict, seen: int, step: int,
                    progress: dict, settings: dict, scaler: dict | None = None) -> dict:
    """The checkpoint dict (every value a tensor or primitive container).

    progress: where the run stands besides `seen` and `step` (data order: sampler epoch and batch
    index; running averages); settings: the resolved run settings (:func:`yolov2.train.command.train`).
    """
    return {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "model": model,
            "optimizer": optimizer, "scaler": scaler or {}, "seen": int(seen), "step": int(step),
            "rng": rng_state(), "progress": dict(progress), "settings": dict(settings)}


def load_checkpoint(path: str | Path, fingerprint: str, model_state: dict) -> dict:
    """Read and fully validate a checkpoint before anything is loaded from it.

    fingerprint: :func:`cfg_fingerprint` of the cfg being trained; model_state: that model's
    `state_dict()` (keys and shapes must match). Raises CheckpointError naming the file.
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
    if ckpt["fingerprint"] != fingerprint:
        cfg = ckpt["settings"].get("cfg", "?")
        raise CheckpointError(f"{path}: written for another network (cfg {cfg}); its layers differ "
                              f"from this cfg's. Use that cfg, or a new run directory.")
    _check_model_state(path, ckpt["model"], model_state)
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


# --------------------------------------------------------------------------- the run directory

CHECKPOINT, LOG, PLOT, SETTINGS, EVAL = "checkpoint.pt", "log.csv", "loss.png", "run.json", "eval.json"


def prepare_run_dir(out: str | Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run unless `force` (which deletes the run's own files only);
    with `resume` a checkpoint must be there."""
    out = Path(out)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise CheckpointError(f"{out}: nothing to resume (no {CHECKPOINT})")
        return
    ours = [f for f in (CHECKPOINT, LOG, SETTINGS) if (out / f).exists()]
    if ours and not force:
        raise CheckpointError(f"{out}: already holds a run ({', '.join(ours)}); pass --resume to continue "
                              f"it or --force to start over")
    for f in out.glob("*"):
        if f.name in (CHECKPOINT, LOG, SETTINGS, PLOT, EVAL) or f.suffix == ".weights":
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def open_log(path: Path, fields: tuple[str, ...], step: int):
    """The per-iteration CSV log, for appending; on resume only the rows up to `step` are kept."""
    rows = path.read_text().splitlines()[1:] if step and path.exists() else []
    # a run killed mid-write may leave a cut last line: keep whole rows up to the checkpoint's step
    whole = [r for r in rows if r.count(",") == len(fields) - 1]
    kept = [r for r in whole if int(r.split(",", 1)[0]) <= step]
    f = open(path, "w", buffering=1)  # line-buffered: each row reaches the file when written
    f.write(",".join(fields) + "\n" + "".join(r + "\n" for r in kept))
    return f


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """A run's `log.csv` (or its run directory) -> {column: array}, one entry per iteration."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG
    try:
        lines = path.read_text().splitlines()
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
    """Loss (with darknet's running average) and Avg IOU / Avg Recall per batch, saved as a PNG."""
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
    fig.savefig(path, dpi=100)
    return Path(path)
