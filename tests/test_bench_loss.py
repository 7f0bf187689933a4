"""benchmarks/bench_loss.py runs end to end: its naive per-image loop gives our gradient, and it prints
every line it promises. (The figures themselves are a benchmark's business, not a test's.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^  (ours|ours, validate=False|naive loop) +([\d.]+) ms, unit +([\d.]+) ms: "
                  r"+([\d.]+) units(?: \(target <= ([\d.]+)\))?(?:  rounds: ([\d. ]+))? *$", re.M)


def test_bench_loss_runs_and_prints_both_configurations():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--repeats", "1", "--rounds", "2"]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "YOLOV2_FAST": "1"},
                         timeout=300, check=True)  # the script first checks the naive loop's gradient
    text = out.stdout
    for config in ("N=32, 13x13, 1-5 truths/image", "N=64, 19x19, 30-30 truths/image"):
        assert text.count(config) == 1, text
    lines = LINE.findall(text)
    assert [name for name, *_ in lines] == ["ours", "ours, validate=False", "naive loop"] * 2, text
    for name, ms, unit, units, target, rounds in lines:
        assert abs(float(ms) / float(unit) - float(units)) < 0.01 + 0.01 * float(units)  # the ratio printed
        ours = name != "naive loop"
        assert (target != "") == ours and (len(rounds.split()) == 2) == ours  # targets; every round shown
    assert len(re.findall(r"naive loop / ours: [\d.]+x", text)) == 2
