"""benchmarks/bench_training_view.py runs and its loss-split account counts what it claims (tiny sizes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_training_view_times_the_split_once_per_forward():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_training_view.py"), "--iterations",
                          "3", "--batch", "2", "--size", "64", "--repeats", "1", "--min-interval", "0"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for kind in ("view off", "view on", "split off"):
        assert re.search(rf"{kind}\s*:\s+[\d.]+ s wall per run", out), out
    m = re.search(r"its own account: ([\d.]+)% of the wall time in (\d+) calls", out)
    assert m, out
    share, calls = float(m[1]), int(m[2])
    assert calls == 3  # subdivisions 1: one forward, so one split, per update
    assert 0 < share < 50  # a share of the run, not of something else
