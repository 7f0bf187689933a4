"""Rebuild `t1_extract.npz` from darknet's golden case T1 (run from the repo root):

    python book/data/ch07/make_extract.py [--shared ../shared]

Chapter 7 replays T1 (`../shared/golden/train_step/T1_b2_s1_k2_96x96_seen0.npz`, 4.3 MB; its README
documents every key) with the Trainer where ../shared is absent, from this extract of what the
section needs (about 370 KB):

- `cfg` (str), `truths` (K, B, 30, 5) float32, `seen_start`, `batch`, `subdivisions`, `K`: the
  case as stored; `image_planes` (4, K·B·3·H·W) uint8 and `image_shape`: its `images`, float32,
  stored as the four byte planes of their little-endian bytes (which compress better), so that
  `image_planes.T.copy().view("<f4").reshape(image_shape)` gives them back bit for bit;
- `seen_after`, `batch_num`, `lr`, `cost`, `updated` (K,), `region_printed` (str): darknet's
  counters, rate, cost and printed diagnostics per forward;
- `param_seed` and `init_sha256`: the initial `.weights` are not copied but drawn again, as the
  README says they were (numpy `default_rng(param_seed)`; per conv layer biases N(0, 0.05), then
  weights N(0, gain·sqrt(2/fan_in)), gain 1.3 for the last); this script checks the redraw against
  the case's `init_weights` bit for bit, and the chapter checks it against `init_sha256`;
- `sample` (M,) int32: positions in the flat parameter vector in `.weights` order (per conv layer
  biases, then weights): every bias and 2000 weights drawn at random (seed 7), sorted;
  `u{u}_sample` (M,) float32: darknet's parameters there after update u;
- `rel_change` (U,): ‖ΔW‖/‖W‖ of each update over all parameters (the manifest's figure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CASE = "T1_b2_s1_k2_96x96_seen0"
KEEP = ("cfg", "truths", "seen_start", "batch", "subdivisions", "K", "seen_after", "batch_num",
        "lr", "cost", "updated", "region_printed")


def draw_parameters(shapes: np.ndarray, seed: int) -> np.ndarray:
    """The case's initial parameters, flat in .weights order (its README, "Initial parameters")."""
    rng, out = np.random.default_rng(seed), []
    for i, (n, c, k, _) in enumerate(shapes):
        gain = 1.3 if i == len(shapes) - 1 else 1.0
        out.append(rng.normal(0, 0.05, n).astype(np.float32))  # biases first, as darknet stores them
        out.append(rng.normal(0, gain * np.sqrt(2 / (c * k * k)), n * c * k * k).astype(np.float32))
    return np.concatenate(out)


def flat_after(d: dict, u: int) -> np.ndarray:
    return np.concatenate([np.concatenate([d[f"u{u}_l{layer:02d}_biases"].ravel(),
                                           d[f"u{u}_l{layer:02d}_weights"].ravel()])
                           for layer in d["conv_layers"]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default="../shared", help="the shared golden data (default ../shared)")
    args = p.parse_args()
    folder = Path(args.shared) / "golden" / "train_step"
    manifest = json.loads((folder / "manifest.json").read_text())["cases"]["T1"]
    with np.load(folder / f"{CASE}.npz", allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    init = d["init_weights"].tobytes()
    seed = manifest["param_seed"]
    if not np.array_equal(draw_parameters(d["conv_shapes"], seed), np.frombuffer(init[20:], "<f4")):
        raise SystemExit(f"{CASE}: the redrawn initial parameters differ from init_weights")
    sizes = [(n, n * c * k * k) for n, c, k, _ in d["conv_shapes"]]  # (biases, weights) per layer
    starts = np.cumsum([0] + [nb + nw for nb, nw in sizes[:-1]])
    biases = np.concatenate([start + np.arange(nb) for start, (nb, _) in zip(starts, sizes, strict=True)])
    weights = np.setdiff1d(np.arange(sum(nb + nw for nb, nw in sizes)), biases)
    drawn = np.random.default_rng(7).choice(weights, 2000, replace=False)
    sample = np.sort(np.concatenate([biases, drawn])).astype(np.int32)
    images = d["images"].astype("<f4")
    planes = np.frombuffer(images.tobytes(), np.uint8).reshape(-1, 4).T.copy()
    assert np.array_equal(planes.T.copy().view("<f4").reshape(images.shape), images)
    out = {k: d[k] for k in KEEP}
    out.update(image_planes=planes, image_shape=np.array(images.shape), param_seed=np.int64(seed),
               init_sha256=np.array(hashlib.sha256(init).hexdigest()), sample=sample,
               rel_change=np.array(manifest["rel_weight_change_per_update"]))
    for u in range(len(d["update_after_forward"])):
        out[f"u{u}_sample"] = flat_after(d, u)[sample]
    tmp = HERE / ".t1_extract.tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, HERE / "t1_extract.npz")
    print(f"{HERE / 't1_extract.npz'}: {(HERE / 't1_extract.npz').stat().st_size} bytes")


if __name__ == "__main__":
    main()
