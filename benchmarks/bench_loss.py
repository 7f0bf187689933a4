"""Region loss speed: forward+backward of `yolov2.RegionLoss` against a per-image, per-truth loop.

Times are printed in units of one fp32 1024x1024 @ 1024x1024 matmul timed in the same run, so
the figures carry across machines. The baseline is a straightforward loop over images and truths
(as the PyTorch port's `build_targets`), written here only; it is checked to give the same
gradient before it is timed.

    python benchmarks/bench_loss.py [--device cuda] [--threads 1] [--repeats 15] [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from yolov2 import RegionLoss
from yolov2.darknet.boxes import box_iou
from yolov2.darknet.cfg import parse_cfg, stock_cfg
from yolov2.darknet.region import RegionConfig, activate, pred_boxes, split_entries


def timed(fn, unit, device: str, repeats: int) -> tuple[float, float]:
    """Fastest of `repeats` timings of fn() and of unit(), alternated so both see the same load.

    On one CPU thread the clock is this process's CPU time (robust to other processes on a shared
    machine, equal to wall time on an idle one); otherwise wall time, after a sync on CUDA.
    """
    one_thread = device == "cpu" and torch.get_num_threads() == 1
    clock = time.process_time if one_thread else time.perf_counter
    best = [math.inf, math.inf]
    fn(), unit()  # warm-up
    for _ in range(repeats):
        for k, f in enumerate((fn, unit)):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            f()
            if device == "cuda":
                torch.cuda.synchronize()
            best[k] = min(best[k], clock() - t0)  # the least disturbed run: load only adds time
    return best[0], best[1]


def make_batch(n: int, s: int, truths: tuple[int, int], classes: int, device: str, seed: int = 0):
    """Random logits (N, A*(5+C), S, S) and truth (N, 30, 5) with truths[0]..truths[1] rows per image."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5 * (5 + classes), s, s, generator=g)
    truth = torch.zeros(n, 30, 5)
    for b in range(n):  # data preparation, not timed
        k = int(torch.randint(truths[0], truths[1] + 1, (), generator=g))
        xy = 0.02 + 0.96 * torch.rand(k, 2, generator=g)
        wh = 0.05 + 0.85 * torch.rand(k, 2, generator=g)
        cls = torch.randint(0, classes, (k, 1), generator=g).float()
        truth[b, :k] = torch.cat((xy, wh, cls), 1)
    return logits.to(device), truth.to(device)


def naive_loss(logits, truth, seen, anchors, classes, thresh=0.6, object_scale=5.0):
    """The baseline: darknet's rules with Python loops over images and truths (noobject, class and
    coord scales 1, rescore and bias_match on, as in yolov2-tiny-voc.cfg)."""
    n, _, h, w = logits.shape
    a = anchors.shape[0]
    z = split_entries(logits, a)  # (N, A, 5+C, H, W)
    with torch.no_grad():
        pred = pred_boxes(activate(logits.detach(), a), anchors)  # (N, A, H, W, 4)
        obj_s = torch.ones(n, a, h, w, device=logits.device)
        obj_t = torch.zeros_like(obj_s)
        coord_s = torch.full_like(obj_s, 0.01 if seen < 12800 else 0.0)
        coord_t = torch.zeros(n, a, 4, h, w, device=logits.device)
        coord_t[:, :, 0:2] = 0.5
        cls_t = torch.full((n, a, h, w), -1, dtype=torch.long, device=logits.device)
        for b in range(n):
            rows = []
            for t in range(30):
                if truth[b, t, 0].item() == 0:
                    break
                rows.append(truth[b, t])
            best = torch.zeros(a, h, w, device=logits.device)
            for row in rows:
                best = torch.maximum(best, box_iou(pred[b], row[:4]))
            obj_s[b][best > thresh] = 0
            for row in rows:
                x, y, bw, bh, c = row.tolist()
                i, j = int(row[0] * w), int(row[1] * h)
                ious = [box_iou(torch.tensor([0, 0, aw / w, ah / h]), torch.tensor([0, 0, bw, bh])).item()
                        for aw, ah in anchors.tolist()]
                k = max(range(a), key=lambda m: (ious[m], -m))
                coord_s[b, k, j, i] = 2 - bw * bh
                coord_t[b, k, :, j, i] = torch.tensor([x * w - i, y * h - j, math.log(bw * w / anchors[k, 0]),
                                                       math.log(bh * h / anchors[k, 1])])
                obj_s[b, k, j, i] = object_scale
                obj_t[b, k, j, i] = box_iou(pred[b, k, j, i], row[:4])
                cls_t[b, k, j, i] = int(c)
    p = torch.cat((torch.sigmoid(z[:, :, 0:2]), z[:, :, 2:4]), 2)
    loss = 0.5 * (coord_s.unsqueeze(2) * (coord_t - p) ** 2).sum()
    loss = loss + 0.5 * (obj_s * (obj_t - torch.sigmoid(z[:, :, 4])) ** 2).sum()
    logp = torch.log_softmax(z[:, :, 5:], 2).gather(2, cls_t.clamp(min=0).unsqueeze(2)).squeeze(2)
    return loss - (logp * (cls_t >= 0)).sum()


def step(fn, logits, truth, seen):
    """One forward+backward; returns the logits' gradient."""
    x = logits.detach().requires_grad_()  # a fresh leaf, no copy
    fn(x, truth, seen).backward()
    return x.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5 if os.environ.get("YOLOV2_FAST") == "1" else 15,
                        help="timings per round (the fastest counts)")
    parser.add_argument("--rounds", type=int, default=2 if os.environ.get("YOLOV2_FAST") == "1" else 5,
                        help="rounds of `repeats`, one second or so apart (the least disturbed counts)")
    args = parser.parse_args()
    dev = args.device
    torch.set_num_threads(args.threads)
    region = next(s for s in parse_cfg(stock_cfg("yolov2-tiny-voc")) if s.type == "region")
    loss_fn = RegionLoss.from_region(RegionConfig.from_section(region)).to(dev)
    fast_fn = RegionLoss.from_region(RegionConfig.from_section(region), validate=False).to(dev)
    a = torch.randn(1024, 1024, device=dev)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          "unit = one 1024x1024 @ 1024x1024 fp32 matmul, timed alongside each line.\n"
          "The loss is memory-bound and the unit is not: a busy host (other tenants) slows the loss more,\n"
          "so each line is the least disturbed of several rounds, and every round's figure is printed.")
    targets = {"ours": (0.5, 5.0), "ours, validate=False": (0.5, 5.0), "naive loop": (None, None)}
    for c, (n, s, truths, seen) in enumerate([(32, 13, (1, 5), 1000), (64, 19, (30, 30), 20000)]):
        batch = (*make_batch(n, s, truths, 20, dev), seen)

        def naive(x, t, k):
            return naive_loss(x, t, k, loss_fn.anchors, 20)

        # the baseline is the same loss: same gradient
        torch.testing.assert_close(step(loss_fn, *batch), step(naive, *batch), atol=1e-5, rtol=1e-4)
        print(f"N={n}, {s}x{s}, {truths[0]}-{truths[1]} truths/image, seen={seen}:")
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            if r:
                time.sleep(1.0)  # host load changes over seconds: spread the rounds out
            for name, f in [("ours", loss_fn), ("ours, validate=False", fast_fn)]:
                rounds[name].append(timed(lambda f=f, b=batch: step(f, *b), lambda: a @ a, dev, args.repeats))
        # the loop is 10-100x slower: one round, fewer repeats
        rounds["naive loop"].append(timed(lambda b=batch: step(naive, *b), lambda: a @ a, dev,
                                          max(2, args.repeats // 3)))
        units = {}
        for name, runs in rounds.items():
            sec, unit = min(runs, key=lambda run: run[0] / run[1])
            units[name] = sec / unit
            target = targets[name][c]
            note = f"(target <= {target})" if target else ""
            every = f"  rounds: {' '.join(f'{t / u:.2f}' for t, u in runs)}" if len(runs) > 1 else ""
            print(f"  {name:22s} {sec * 1e3:8.2f} ms, unit {unit * 1e3:6.2f} ms: "
                  f"{units[name]:7.2f} units {note}{every}")
        print(f"  naive loop / ours: {units['naive loop'] / units['ours']:.1f}x")

if __name__ == "__main__":
    main()
