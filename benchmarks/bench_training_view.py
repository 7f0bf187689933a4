"""What the live training view (yolov2.book.training_view) and the loss split by rule cost a run.

Three kinds of run of the same trainer settings, alternating so that a busy machine slows them alike:

- "view off": `Trainer.run()`, what the command line does (the loss split by rule included);
- "view on": `TrainingView(trainer, live=True).run()`, its widgets made without a frontend (their
  messages go nowhere: the drawing, the PNGs and the widget updates are what is timed);
- "split off": `Trainer.run()` with the split's five sums replaced by zeros in the stats vector,
  what the log's split columns cost every run. Whole runs apart are a coarse measure of a cost this
  small, so the "view off" runs also time `region_loss.rule_parts` itself (the split's own account).

Each run trains `--iterations` updates of yolov2-tiny-synth on synthetic images from a fresh trainer
(seed 0, `--threads` torch threads); the figures are the medians over `--repeats` of the wall time
and of the process's CPU time per run (on a machine shared with other jobs the CPU time is the
steadier one), and view on / view off − 1 is the view's overhead, after a warm-up draw (importing
ipywidgets and matplotlib's first text are the process's costs, paid once, not the run's). The
view's own account (its `draw_time`, the seconds spent in its updates) is printed next to it.

    python benchmarks/bench_training_view.py                 # CPU: 30 updates of 16 images, 128 px
    python benchmarks/bench_training_view.py --device cuda --iterations 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import yolov2.loss.region_loss as region_loss_module
import yolov2.train.trainer as trainer_module
from yolov2.book.training_view import TrainingView
from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.ulp import cpu_name
from yolov2.data.synth import make_synthetic_voc
from yolov2.train.command import Runtime, Settings, Trainer


def make_trainer(root: Path, out: Path, args) -> Trainer:
    out.mkdir(parents=True)
    s = Settings(str(stock_cfg("yolov2-tiny-synth")), str(root), batch=args.batch, subdivisions=1,
                 sizes=[args.size], seed=0, max_batches=args.iterations, checkpoint_every=10**6)
    rt = Runtime(torch.device(args.device), progress=False, workers=args.workers)
    return Trainer(s, rt, out, resume=False)


class TimedSplit:
    """region_loss.rule_parts with its own time summed (the split's own account; on CUDA the time
    to queue its kernels, which is what the host pays)."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.inner = 0.0, 0, region_loss_module.rule_parts

    def __call__(self, *args, **kw):
        t = time.perf_counter()
        try:
            return self.inner(*args, **kw)
        finally:
            self.seconds, self.calls = self.seconds + time.perf_counter() - t, self.calls + 1


def no_split(loss, stats):
    """stats_vector with the split's five sums left out (zeros): the trainer without the split."""
    t = stats.tensors
    n = t["count"].to(loss.dtype)
    per = [torch.nan_to_num(t[k].to(loss.dtype)) * n for k in ("avg_iou", "class", "obj", "avg_recall")]
    return torch.cat([torch.stack([loss, *per, t["no_obj"].to(loss.dtype), n]), loss.new_zeros(5)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--min-interval", type=float, default=1.0, help="the view's min_interval (s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_synthetic_voc(tmp / "voc", max(64, args.batch * 4), 0, seed=0)
        # one-time costs of the process, not of a run: importing ipywidgets, matplotlib's font cache
        warm = TrainingView(make_trainer(root, tmp / "warm", args), live=True)
        warm.rows = [warm.trainer.iteration()]
        warm.draw()
        walls: dict[str, list[float]] = {"view off": [], "view on": [], "split off": []}
        cpus: dict[str, list[float]] = {k: [] for k in walls}
        draw_time, draws, split_share, split_calls = [], [], [], []
        for r in range(args.repeats):
            for kind in walls:
                t = make_trainer(root, tmp / f"{kind.replace(' ', '_')}{r}", args)
                saved, saved_parts = trainer_module.stats_vector, region_loss_module.rule_parts
                if kind == "split off":
                    trainer_module.stats_vector = no_split
                if kind == "view off":
                    timed = region_loss_module.rule_parts = TimedSplit()
                try:
                    t0, c0 = time.perf_counter(), time.process_time()
                    if kind == "view on":
                        view = TrainingView(t, live=True, min_interval=args.min_interval)
                        view.run()
                        draw_time.append(view.draw_time)
                        draws.append(view.draws)
                    else:
                        t.run()
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    walls[kind].append(time.perf_counter() - t0)
                    cpus[kind].append(time.process_time() - c0)
                    if kind == "view off":
                        split_share.append(timed.seconds / walls[kind][-1])
                        split_calls.append(timed.calls)
                finally:
                    trainer_module.stats_vector, region_loss_module.rule_parts = saved, saved_parts
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(f"{cpu_name() if args.device == 'cpu' else torch.cuda.get_device_name()}; {args.iterations} "
          f"updates of {args.batch} images at {args.size} px, {args.threads} thread(s), median of "
          f"{args.repeats}")
    for k, v in med.items():
        print(f"  {k:9s}: {v:7.2f} s wall per run ({args.iterations * args.batch / v:6.1f} images/s), "
              f"{cpu[k]:7.2f} s CPU")
    view_wall = med["view on"]
    print(f"  view overhead: {100 * (view_wall / med['view off'] - 1):+.1f}% wall, "
          f"{100 * (cpu['view on'] / cpu['view off'] - 1):+.1f}% CPU (its own account: "
          f"{100 * statistics.median(draw_time) / view_wall:.1f}% of the wall time in "
          f"{statistics.median(draws):.0f} draws and {args.iterations} status updates)")
    print(f"  loss split's cost: {100 * (med['view off'] / med['split off'] - 1):+.1f}% wall, "
          f"{100 * (cpu['view off'] / cpu['split off'] - 1):+.1f}% CPU (runs apart: mostly the machine's "
          f"noise); its own account: {100 * statistics.median(split_share):.2f}% of the wall time in "
          f"{statistics.median(split_calls):.0f} calls")


if __name__ == "__main__":
    main()
