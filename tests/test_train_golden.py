"""The trainer against darknet's own training iterations (../shared/golden/train_step, its README).

Oracle: darknet's `train_network_datum` (forward, backward, `update_network`) run on given images
and truths: per forward seen, batch_num, rate, cost, whether it updated, the region output and
delta; per update every conv layer's weights, biases and momentum buffers; the final `.weights`.
One test per case file in $YOLOV2_TRAIN_GOLDEN (default ../shared/golden/train_step): the case's
own cfg (batch, subdivisions, size, burn_in, steps, rates) and initial `.weights` (its seen), the
real `Trainer` fed the stored batches (`Trainer.from_batches`), compared after every forward and
every update. The golden darknet compares steps unsigned (its README, "learning rate"), a bug the
package reproduces behind `unsigned_steps`, which this test turns on.

Tolerances (README, "Measured reproducibility" and its recommendations: the gap between darknet's
-Ofast and strict builds, which PyTorch's other summation order may pass ten times over). In
brackets our worst on T1, CPU float32; five synthetic cases against a float64 re-statement of the
README (B 1-3, S 1-4, seen_start 0-12796, burn_in, signed and unsigned steps) stay below them too:
- seen, batch_num, rate, which forwards update, the .weights header and the initial .weights
  written back: exact.
- region output, delta and delta_logit (values up to ~4): atol 1e-5 up to the first update (builds
  3e-8; [2e-6]: darknet's float32 forward is itself 1.6e-6 from a float64 one, ours 0.7e-6), 5e-5
  after one, when the parameters' rounding has gone through nine layers (builds 2.4e-6; [2.5e-6]).
- cost, Σ delta² over 1e3-1e4 entries: rtol 1e-5 up to the first update, 1e-4 after (builds
  1.3e-6; [1.1e-7, 2.2e-7]).
- parameters after each update and in the final .weights: |ours - darknet| <= 1e-6 + 1e-5·|darknet|
  (builds 2.4e-7 on parameters up to ~1; [1.3e-7]).
- momentum buffers (`*_updates`, `*_pre`): 1e-4 of each array's largest |value| (builds 1e-6 of it;
  [1.6e-6]): gradient sums over 1e3-1e4 terms, whose rounding scales with their size.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED, load_npz, shared_path

from yolov2.darknet.cfg import parse_cfg_text
from yolov2.darknet.region import activate
from yolov2.train.trainer import Trainer

FOLDER = Path(os.environ.get("YOLOV2_TRAIN_GOLDEN", SHARED / "golden" / "train_step"))
CASES = sorted(FOLDER.glob("*.npz")) if FOLDER.is_dir() else []
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HEADER = 20  # .weights header: major, minor, revision (int32) and seen (int64)

REGION_ATOL = (1e-5, 5e-5)  # (before the first update, after one)
COST_RTOL = (1e-5, 1e-4)
PARAM_ATOL, PARAM_RTOL = 1e-6, 1e-5
BUFFER_REL = 1e-4
BUFFERS = {"biases": "bias_updates", "weights": "weight_updates"}  # darknet's momentum buffers


def case_params():
    if not CASES:
        why = f"no darknet train-step cases (*.npz) in {FOLDER} (set YOLOV2_TRAIN_GOLDEN, or add ../shared)"
        return [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=why))]
    return [pytest.param(p, id=p.stem) for p in CASES]


class Worst(dict):
    """Per quantity the largest |ours - darknet| and that over the reference's largest |value|."""

    def add(self, key: str, diff: float, scale: float) -> None:
        a, r = self.get(key, (0.0, 0.0))
        self[key] = (max(a, diff), max(r, diff / scale if scale else 0.0))


def close(what: str, ours, ref, atol: float, rtol: float, worst: Worst) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, darknet {ref.shape}"
    diff = np.abs(ours - ref)
    worst.add(what.split("[")[0], diff.max(initial=0.0), np.abs(ref).max(initial=0.0))
    bad = diff > atol + rtol * np.abs(ref)
    if bad.any():
        i = np.unravel_index(np.argmax(diff - atol - rtol * np.abs(ref)), diff.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} entries off (worst at {i}: ours "
                             f"{ours[i]:.9g}, darknet {ref[i]:.9g}; atol {atol:g}, rtol {rtol:g})")


def printed_numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+|-?nan|\d+", line.split("IOU", 1)[1])]


def trainer_for(d: dict, folder: Path, device: str) -> Trainer:
    """The case's cfg and initial weights, the stored batches as the batch source."""
    (folder / "case.cfg").write_text(d["cfg"].item())
    (folder / "init.weights").write_bytes(d["init_weights"].tobytes())
    net = parse_cfg_text(d["cfg"].item())[0]
    batch, subdivisions = net.get_int("batch"), net.get_int("subdivisions")
    assert (batch, subdivisions) == (int(d["batch"]) * int(d["subdivisions"]), int(d["subdivisions"]))
    batches = [(d["images"][k], d["truths"][k]) for k in range(int(d["K"]))]
    return Trainer.from_batches(folder / "case.cfg", batches, weights=folder / "init.weights",
                                device=device, batch=batch, subdivisions=subdivisions,
                                unsigned_steps=True)


def replay(d: dict, folder: Path, device: str = "cpu") -> Worst:
    """Run the case through the Trainer, asserting every comparison; the worst differences."""
    worst = Worst()
    t = trainer_for(d, folder, device)
    assert t.seen == int(d["seen_start"])
    t.save_weights(folder / "start.weights")  # loaded and written back: darknet's bytes
    assert (folder / "start.weights").read_bytes() == d["init_weights"].tobytes()
    momentum = t.opt.param_groups[0]["momentum"]
    pre: dict[torch.Tensor, torch.Tensor] = {}

    def before_step(opt, args, kwargs):  # darknet's *_pre: the summed -gradient + carried momentum
        for group in opt.param_groups:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                pre[p] = -(p.grad if buf is None else momentum * buf + p.grad)

    t.opt.register_step_pre_hook(before_step)
    printed = d["region_printed"].item().splitlines()
    b, updates = int(d["batch"]), 0
    for k in range(int(d["K"])):
        assert t.seen == d["seen_before"][k]
        f = t.train_datum()
        counters = (f.seen, f.batch_num, f.updated, np.float32(f.rate))
        assert counters == (d["seen_after"][k], d["batch_num"][k], bool(d["updated"][k]), d["lr"][k]), k
        assert f.rate == float(d["lr"][k])  # the float32 value itself, not a nearby double
        after = updates > 0  # the forward ran on updated parameters
        phase = "after an update" if after else "first forwards"
        shape = d["region_output"][k].shape  # (B, A*(5+C), h, w)
        atol = REGION_ATOL[after]
        output = activate(f.logits, t.net.region.num).cpu()
        close(f"region_output, {phase}[{k}]", output, d["region_output"][k], atol, 0, worst)
        delta = t.loss_fn.delta(f.logits, f.truths, f.seen).cpu()
        close(f"region_delta, {phase}[{k}]", delta, d["region_delta"][k], atol, 0, worst)
        close(f"region_delta_logit, {phase}[{k}]", -f.grad.cpu(), d["region_delta_logit"][k], atol, 0, worst)
        assert delta.shape == shape and f.logits.shape[0] == b
        close(f"cost, {phase}[{k}]", delta.double().square().sum(), d["cost"][k], 0, COST_RTOL[after], worst)
        ours, theirs = np.array(printed_numbers(str(f.stats))), np.array(printed_numbers(printed[k]))
        assert ours[-1] == theirs[-1], f"forward {k}: count {ours[-1]}, darknet {theirs[-1]}"
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), (str(f.stats), printed[k])  # -nan
        close(f"region_printed[{k}]", np.nan_to_num(ours[:-1]), np.nan_to_num(theirs[:-1]), 1e-5, 0,
              worst)  # printed with %f: 6 decimals
        if f.updated:
            check_update(t, d, updates, k, pre, momentum, worst)
            updates += 1
    assert updates == len(d["update_after_forward"])
    t.save_weights(folder / "final.weights")
    final, ref = (folder / "final.weights").read_bytes(), d["final_weights"].tobytes()
    assert len(final) == len(ref) and final[:HEADER] == ref[:HEADER]  # seen = seen_after[-1]
    close("final_weights", np.frombuffer(final[HEADER:], "<f4"), np.frombuffer(ref[HEADER:], "<f4"),
          PARAM_ATOL, PARAM_RTOL, worst)
    return worst


def check_update(t: Trainer, d: dict, u: int, k: int, pre: dict, momentum: float, worst: Worst) -> None:
    """Update u (after forward k): its rate, batch and count, then every conv layer's arrays."""
    assert (d["update_after_forward"][u], d["update_batch"][u], d["update_t"][u]) == (k, t.s.batch, t.step)
    assert np.float32(t.rate) == d["update_lr"][u]
    for layer in d["conv_layers"]:
        conv = t.net.layers[int(layer)]
        for name, p in conv.darknet_params().items():  # biases, weights (no batch norm here)
            key = f"u{u}_l{int(layer):02d}_{name}"
            close(key, p.detach().cpu(), d[key], PARAM_ATOL, PARAM_RTOL, worst)
            # SGD on the summed loss: darknet's weight_updates after the update = -momentum * buffer
            buf = t.opt.state[p]["momentum_buffer"]
            stem = f"u{u}_l{int(layer):02d}_{BUFFERS[name]}"
            scale = BUFFER_REL * np.abs(d[stem]).max()
            close(stem, -momentum * buf.cpu(), d[stem], scale, 0, worst)
            scale = BUFFER_REL * np.abs(d[stem + "_pre"]).max()
            close(stem + "_pre", pre[p].cpu(), d[stem + "_pre"], scale, 0, worst)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", case_params())
def test_trainer_replays_darknets_training(path, device, tmp_path):
    d = load_npz(path)
    missing = [k for k in ("cfg", "init_weights", "final_weights", "images", "truths", "seen_before",
                           "seen_after", "batch_num", "lr", "cost", "updated", "region_output",
                           "region_delta", "region_delta_logit", "update_after_forward") if k not in d]
    assert not missing, f"{path}: not a train-step case (missing {missing}; see its README)"
    if device == "cuda":  # float32, not TF32 (README); the CPU has no such mode
        assert torch.get_float32_matmul_precision() == "highest"
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            replay(d, tmp_path, device)
    else:
        replay(d, tmp_path, device)


def test_chapter_7_extract_is_a_faithful_cut_of_t1():
    """book/data/ch07/t1_extract.npz holds T1's arrays bit for bit (its make_extract.py cuts it)."""
    d = load_npz(shared_path("golden", "train_step", "T1_b2_s1_k2_96x96_seen0.npz"))
    x = load_npz(ROOT / "book" / "data" / "ch07" / "t1_extract.npz")
    for key in ("cfg", "truths", "seen_start", "batch", "subdivisions", "K", "seen_after", "batch_num",
                "lr", "cost", "updated", "region_printed"):
        np.testing.assert_array_equal(x[key], d[key], err_msg=key)
    images = x["image_planes"].T.copy().view("<f4").reshape(x["image_shape"])
    np.testing.assert_array_equal(images, d["images"])
    assert x["init_sha256"].item() == hashlib.sha256(d["init_weights"].tobytes()).hexdigest()
    n_biases = int(d["conv_shapes"][:, 0].sum())
    for u in range(len(d["update_after_forward"])):
        flat = np.concatenate([np.concatenate([d[f"u{u}_l{layer:02d}_biases"].ravel(),
                                               d[f"u{u}_l{layer:02d}_weights"].ravel()])
                               for layer in d["conv_layers"]])
        np.testing.assert_array_equal(x[f"u{u}_sample"], flat[x["sample"]])
    assert len(x["sample"]) == n_biases + 2000 and np.all(np.diff(x["sample"]) > 0)
