"""tools/gpu_check.py's dry run: the GPU check's steps on the CPU, tiny, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step_and_prints_one_table(capsys):
    rows = load_gpu_check().main(["--dry-run"])
    assert list(rows) == ["device", "CUDA tests", "train images/s", "train amp", "train peak memory",
                          "GPU utilisation", "train last loss", "loss sync check", "fused fp32", "fused fp16",
                          "fused bf16", "torchrun", "wall time"]
    assert not any("FAILED" in v or "exit" in v for v in rows.values()), rows
    assert "tests collected" in rows["CUDA tests"]
    assert float(rows["train images/s"].split()[0]) > 0 and rows["train last loss"] != "nan"
    assert "mAP" in rows["fused fp32"] and rows["fused fp16"] == "n/a on cpu"
    assert rows["torchrun"].startswith("2 CPU ranks: trained to batch 2")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| check") and len(out) == 2 + len(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the real check would run (minutes)")
def test_without_cuda_the_real_run_says_so():
    r = subprocess.run([str(ROOT / "tools" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "no CUDA device here (use --dry-run" in r.stderr
