"""The bench command's table (structure and arithmetic, not timings), its FLOP count and its random nets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from yolov2 import Darknet
from yolov2.darknet.infer import bf16_supported
from yolov2.deploy.bench import (
    ALL_PATHS,
    count_flops,
    layer_flops,
    map_by_precision,
    random_darknet,
    time_interleaved,
)
from yolov2.deploy.bench import main as bench_main


def main(argv: list[str]) -> int:
    """The bench command in this process, under the tests' OpenMP settings (no re-run)."""
    return bench_main([*argv, "--omp-wait-policy", "inherit"])


def test_bench_command_writes_a_consistent_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    paths = "opencv,plain,fused,fused-nopack,bf16,onnxruntime,detect"
    assert main(["--models", "yolov2-tiny-synth", "--size", "64", "--repeats", "2", "--batches", "1,2",
                 "--paths", paths, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    names = [p for p in paths.split(",") if p != "bf16" or bf16_supported()]
    assert [(r["batch"], r["path"]) for r in rows] == [(b, p) for b in (1, 2) for p in names]
    flops = count_flops(Darknet("yolov2-tiny-synth"), 64, 64)
    for r in rows:
        base = next(q for q in rows if q["batch"] == r["batch"] and q["path"] == "opencv")
        fused = next(q for q in rows if q["batch"] == r["batch"] and q["path"] == "fused")
        assert r["model"] == "yolov2-tiny-synth" and r["size"] == 64 and r["flops"] == flops
        assert 0 < r["ms_min"] <= r["ms"]
        assert r["vs_opencv"] == pytest.approx(r["ms"] / base["ms"])
        assert r["vs_fused"] == pytest.approx(r["ms"] / fused["ms"])
        assert r["gflops"] == pytest.approx(flops * r["batch"] / (r["ms"] * 1e-3) / 1e9)
        if r["path"] in ("plain", "fused", "fused-nopack", "onnxruntime"):
            assert r["rel_err_mean"] <= r["rel_err"] <= 1e-4
        assert (r["rel_err"] is None) == (r["path"] == "detect")
    assert doc["conditions"]["threads"] == 2 and doc["conditions"]["repeats"] == 2
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("| model | batch | path | ms | vs OpenCV") and len(table) == 4 + len(rows)
    assert table[3].split("|")[3].strip() == "opencv"


def test_bench_restores_thread_settings():
    cv2 = pytest.importorskip("cv2")
    before = torch.get_num_threads(), cv2.getNumThreads()
    main(["--models", "yolov2-tiny-synth", "--size", "32", "--repeats", "1", "--batches", "1",
          "--paths", "plain", "--threads", "1"])
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


def test_bench_bad_arguments(capsys):
    assert main(["--models", "no-such-cfg", "--repeats", "1"]) == 1
    assert "no-such-cfg: cfg file not found" in capsys.readouterr().err
    assert main(["--size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--paths", "plain,tensorrt"])
    assert "choose from " + ", ".join(ALL_PATHS) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--batches", "1,x"])
    assert "comma-separated list" in capsys.readouterr().err


def test_flops_are_darknets():
    """darknet's l.bflops, 2 * nweights * out_h * out_w summed over convs, from darknet's layer dims."""
    for fixture, cfg in (("tiny_320_body", "tiny"), ("voc_320_passthrough", "voc")):
        meta = json.loads(str(np.load(FIXTURES / "net" / f"{fixture}.npz")["meta_json"]))
        ref = sum(2 * r["nweights"] * r["out_h"] * r["out_w"] for r in meta["layers"]
                  if r["type"] == "convolutional")
        assert count_flops(Darknet(FIXTURES / "net" / f"{cfg}.cfg"), meta["net_h"], meta["net_w"]) == ref
    # darknet's published figure for Tiny YOLO (VOC) at 416: 6.97 Bn FLOPs
    assert round(count_flops(Darknet("yolov2-tiny-voc"), 416, 416) / 1e9, 2) == 6.97


def test_layer_flops_are_darknets_per_layer():
    """Each conv's FLOPs are darknet's 2 * nweights * out_h * out_w of that layer; other layers count 0."""
    for fixture, cfg in (("tiny_320_body", "tiny"), ("voc_320_passthrough", "voc")):
        meta = json.loads(str(np.load(FIXTURES / "net" / f"{fixture}.npz")["meta_json"]))
        net = Darknet(FIXTURES / "net" / f"{cfg}.cfg")
        flops = layer_flops(net, meta["net_h"], meta["net_w"])
        assert len(flops) == len(net.layers) and sum(flops) == count_flops(net, meta["net_h"], meta["net_w"])
        for r in meta["layers"]:
            conv = r["type"] == "convolutional"
            assert flops[r["index"]] == (2 * r["nweights"] * r["out_h"] * r["out_w"] if conv else 0), r
    full = Darknet("yolov2-voc")
    at_416, at_608 = layer_flops(full, 416, 416), layer_flops(full, 608, 608)
    assert [i for i, f in enumerate(at_416) if f == 0] == [1, 3, 7, 11, 17, 25, 27, 28, 31]
    # the head: 2 * 1 * 1 * 1024 * 125 * 13 * 13; the 608 input has a 19x19 grid
    assert at_416[30] == 2 * 1024 * 125 * 13 * 13 and at_608[30] == 2 * 1024 * 125 * 19 * 19


def test_random_darknet_is_reproducible_and_calibrated():
    a, b, c = (random_darknet("yolov2-tiny-synth", seed=s, calibrate=64) for s in (1, 1, 2))
    sa, sb, sc = (torch.cat([t.flatten() for t in n.state_dict().values()]) for n in (a, b, c))
    assert torch.equal(sa, sb) and not torch.equal(sa, sc)
    with torch.no_grad():
        logits = a(torch.rand(2, 3, 64, 64))
    assert 0.3 < logits.std() < 10  # calibrated: a trained net's range, not exploding with depth


def test_time_interleaved_shuffles_rounds():
    calls = []
    times = time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abcd"}, repeats=20, warmup=1)
    rounds = ["".join(calls[k:k + 4]) for k in range(0, len(calls), 4)]
    assert rounds[0] == "abcd" and all(sorted(r) == list("abcd") for r in rounds)  # warm-up, permutations
    assert len({r[0] for r in rounds[1:]}) == 4  # every runner goes first sometimes ...
    assert len({r[r.index("a") - 1] for r in rounds[1:] if r[0] != "a"}) == 3  # ... and follows every other
    assert {k: len(v) for k, v in times.items()} == {k: 20 for k in "abcd"}


def test_map_by_precision_is_valids_map(tmp_path):
    """fp32 through the fused path gives the mAP that train.voc_map computes with the plain net."""
    from yolov2.data.synth import main as synth
    from yolov2.train.command import voc_map

    assert synth(["--out", str(tmp_path / "synth"), "--train", "0", "--test", "6", "--seed", "0"]) == 0
    net = random_darknet("yolov2-tiny-synth", seed=4, calibrate=416)
    net.save_weights(tmp_path / "random.weights")
    precisions = ("fp32", "bf16") if bf16_supported() else ("fp32",)
    maps = map_by_precision("yolov2-tiny-synth", tmp_path / "random.weights", tmp_path / "synth",
                            precisions=precisions)
    assert list(maps) == list(precisions) and all(0 <= m <= 1 for m in maps.values())
    assert maps["fp32"] == pytest.approx(voc_map(net, tmp_path / "synth").map, abs=1e-3)
    out = tmp_path / "bench.json"
    assert main(["--models", "yolov2-tiny-synth", "--size", "32", "--repeats", "1", "--batches", "1",
                 "--paths", "plain", "--json", str(out), "--map-data", str(tmp_path / "synth"),
                 "--map-weights", str(tmp_path / "random.weights")]) == 0
    assert json.loads(out.read_text())["map"] == pytest.approx(maps)


def test_map_option_needs_weights(capsys):
    assert main(["--map-data", "somewhere"]) == 2
    assert "--map-data needs --map-weights" in capsys.readouterr().err


def test_bench_reruns_itself_with_passive_openmp(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    out = tmp_path / "bench.json"
    assert bench_main(["--models", "yolov2-tiny-synth", "--size", "32", "--repeats", "1", "--batches", "1",
                       "--paths", "plain", "--json", str(out)]) == 0
    assert "OMP_WAIT_POLICY=PASSIVE" in capfd.readouterr().out
    assert json.loads(out.read_text())["conditions"]["OMP_WAIT_POLICY"] == "PASSIVE"
