"""The GPU check behind tools/gpu_check.sh: what only a CUDA machine can show, in one table.

1. the tests that need CUDA (they skip elsewhere);
2. training: yolov2-tiny-voc at 416, batch 64, AMP, on synthetic data through the trainer's own
   DataLoader: images/s, peak memory, GPU utilisation sampled from nvidia-smi;
3. the region loss and its backward under torch.cuda.set_sync_debug_mode("error"): no host sync;
4. fused inference in fp32, fp16 and bf16: ms per batch and VOC07 mAP of the committed demo weights
   (data/yolov2-tiny-synth.weights) on the synthetic test split;
5. torchrun on 2 GPUs, when there are two.

`--dry-run` runs the same steps on the CPU with tiny sizes (the CUDA tests collected, not run; the
sync check and fp16 marked n/a; torchrun with 2 CPU ranks), so CI keeps the script working.

    tools/gpu_check.sh              # on a GPU machine, <= 8 minutes
    tools/gpu_check.sh --dry-run    # anywhere, well under a minute
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.infer import bf16_supported, fp16_supported
from yolov2.darknet.model import Darknet
from yolov2.data.image import load_image
from yolov2.data.labels import write_class_names
from yolov2.data.synth import SYNTH_CLASSES, make_synthetic_voc
from yolov2.detect.detector import Detector
from yolov2.detect.evaluate import evaluate_detections, load_annotations
from yolov2.detect.postprocess import results_from_detections
from yolov2.train.command import Runtime, Settings, Trainer
from yolov2.train.runtime import autocast

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_amp.py", "tests/test_infer.py", "tests/test_ddp.py", "tests/test_train.py"]


class Utilisation:
    """nvidia-smi's utilization.gpu of one GPU, sampled every 0.5 s in a thread: mean and max (%)."""

    def __init__(self, index: int) -> None:
        self.index, self.samples, self._stop = index, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
               "-i", str(self.index)]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        if not self.samples:
            return "n/a (no nvidia-smi readings)"
        return f"mean {sum(self.samples) / len(self.samples):.0f}%, max {max(self.samples):.0f}%"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_tests(dry: bool) -> str:
    """Run (or, dry, collect) the tests whose names or ids mention cuda."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *CUDA_TESTS]
    if dry:
        cmd.append("--collect-only")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = (r.stdout.strip().splitlines() or ["no output"])[-1]
    return ("collected: " if dry else "") + last + ("" if r.returncode == 0 else f" (exit {r.returncode})")


def train_check(root: Path, device: torch.device, size: int, batch: int, iterations: int, workers: int,
                amp: bool) -> tuple[dict[str, str], Trainer]:
    names = root / "twenty.names"  # tiny-voc has 20 classes: the 5 synthetic ones and 15 unused
    write_class_names(names, [*SYNTH_CLASSES, *(f"unused{i}" for i in range(15))])
    s = Settings(str(stock_cfg("yolov2-tiny-voc")), str(root / "train"), names=str(names), batch=batch,
                 subdivisions=1, sizes=[size], max_batches=10**9)
    (root / "run").mkdir()
    t = Trainer(s, Runtime(device, workers=workers, progress=False, amp=amp), root / "run", resume=False)
    warm = min(5, iterations // 2)  # then at least half the iterations are timed
    for _ in range(warm):
        t.iteration()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device.index or 0) if device.type == "cuda" else _Null() as util:
        sync(device)
        start = time.perf_counter()
        rows = [t.iteration() for _ in range(iterations - warm)]
        sync(device)
        wall = time.perf_counter() - start
    done = len(rows) * t.step_images
    cuda = device.type == "cuda"
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if cuda else "n/a (cpu)"
    loss = rows[-1]["loss"] if rows else float("nan")
    return {"train images/s": f"{done / wall:.1f} ({iterations} iterations, {warm} of them warm-up)",
            "train amp": str(t.rt.amp_dtype or "off (float32)"), "train peak memory": peak,
            "GPU utilisation": util.text(), "train last loss": f"{loss:.4g}"}, t


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def text(self) -> str:
        return "n/a (cpu)"


def sync_check(t: Trainer) -> str:
    """The loss and its backward under set_sync_debug_mode("error"): any host synchronisation raises."""
    images, truths = t.next_batch()
    with autocast(t.rt):
        logits = t.model(images)
    if t.rt.device.type != "cuda":
        t.loss_fn(logits, truths, t.seen).backward()
        return "n/a (cpu; the loss ran)"
    sync(t.rt.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.loss_fn(logits, truths, t.seen).backward()
    except RuntimeError as e:
        return f"FAILED: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    t.opt.zero_grad(set_to_none=True)
    return "ok: no host synchronisation in loss + backward"


def inference_check(root: Path, device: torch.device, size: int, batch: int, repeats: int) -> dict[str, str]:
    """ms per batch and VOC07 mAP of the demo weights on the synthetic test split, per fused precision."""
    net = Darknet("yolov2-tiny-synth")
    net.load_weights(ROOT / "data" / "yolov2-tiny-synth.weights")
    net.width = net.height = size
    net = net.eval().to(device)
    annotations = load_annotations(root / "test", "2007", "test")
    ids = list(annotations)
    images = [load_image(root / "test" / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in ids]
    x = torch.rand(batch, 3, size, size, device=device)
    out = {}
    for precision in ("fp32", "fp16", "bf16"):
        ok = fp16_supported(device) if precision == "fp16" else precision == "fp32" or bf16_supported(device)
        if not ok:
            out[f"fused {precision}"] = f"n/a on {device.type}"
            continue
        fused = net.fuse(precision)
        with torch.no_grad():
            for _ in range(2):
                fused(x)
            sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fused(x)
            sync(device)
        ms = (time.perf_counter() - start) / repeats * 1e3
        detector = Detector(fused, thresh=0.005, relative=False, fused=False)  # validate_detector's
        dets = {}
        for k in range(0, len(ids), 32):
            dets.update(zip(ids[k:k + 32], detector(images[k:k + 32]), strict=True))
        m = evaluate_detections(annotations, results_from_detections(dets, SYNTH_CLASSES), SYNTH_CLASSES).map
        out[f"fused {precision}"] = (f"{ms:.2f} ms per batch of {batch} at {size}, mAP {m:.4f} "
                                     f"({len(ids)} images)")
    return out


def torchrun_check(root: Path, dry: bool) -> str:
    gpus = torch.cuda.device_count()
    if not dry and gpus < 2:
        return f"skipped ({gpus} GPU{'s' if gpus != 1 else ''} here; needs 2)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    size, batch, batches = ("64", "4", "2") if dry else ("416", "128", "30")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "yolov2", "train", "yolov2-tiny-synth", str(root / "train"),
           "--out", str(root / "ddp"), "--sizes", size, "--batch", batch, "--subdivisions", "1",
           "--max-batches", batches,
           "--final-batches", "0", "--no-progress", "--device", "cpu" if dry else "cuda",
           "--workers", "0" if dry else "6", "--recipe", "adam"]
    env = dict(os.environ, OMP_NUM_THREADS="1") if dry else None
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    if r.returncode:
        return f"FAILED (exit {r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1]}"
    line = next((s for s in r.stdout.splitlines() if s.startswith("trained to batch")), "no summary")
    return f"2 {'CPU ranks' if dry else 'GPUs'}: {line}"


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    p.add_argument("--iterations", type=int, help="training iterations (default 300; dry run 3)")
    a = p.parse_args(argv)
    dry = a.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --dry-run to run the steps on the CPU)")
    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    rows = {"device": f"{where}, torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_train, n_test = (4, 4) if dry else (256, 500)
        make_synthetic_voc(root / "train", n_train, 0, seed=0)
        make_synthetic_voc(root / "test", 0, n_test, seed=0)  # the demo's test split (seed 0)
        rows["CUDA tests"] = cuda_tests(dry)
        amp = bf16_supported("cpu") if dry else True
        size, batch, workers = (64, 2, 0) if dry else (416, 64, min(12, max(1, (os.cpu_count() or 2) - 2)))
        iterations = a.iterations or (3 if dry else 300)
        train_rows, trainer = train_check(root, device, size, batch, iterations, workers, amp)
        rows |= train_rows
        rows["loss sync check"] = sync_check(trainer)
        trainer._it = trainer.loader = None  # stop the loader's workers
        rows |= inference_check(root, device, 64 if dry else 416, 2 if dry else 64, 1 if dry else 20)
        rows["torchrun"] = torchrun_check(root, dry)
    rows["wall time"] = f"{time.perf_counter() - t0:.0f} s"
    width = max(len(k) for k in rows)
    print(f"| {'check':{width}} | result |\n|{'-' * (width + 2)}|--------|")
    for k, v in rows.items():
        print(f"| {k:{width}} | {v} |")
    return rows


if __name__ == "__main__":
    main()
