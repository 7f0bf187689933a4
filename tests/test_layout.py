"""The package's layout: each part imports only the parts below it, and no module imports one that
imports it back (every import counts: module level, inside functions and under TYPE_CHECKING)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import yolov2

ROOT = Path(yolov2.__file__).parent
# part -> the parts it may import (besides itself); the CLI dispatcher and the package face take any
# (`files`, when present: atomic outputs and text decoding that every part shares, below them all)
ALLOWED = {
    "files": set(),
    "darknet": {"files"},
    "data": {"files"},
    "loss": {"files", "darknet"},
    "detect": {"files", "darknet", "data"},
    "train": {"files", "darknet", "data", "loss", "detect"},
    "deploy": {"files", "darknet", "data", "detect"},
    "book": {"files", "darknet", "data", "loss", "detect", "train"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every yolov2 module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("yolov2"):
                for alias in node.names:  # `from yolov2.data import voc` imports yolov2.data.voc
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                              else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("yolov2")}
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {m: imports(p) - {m} for m, p in MODULES.items()}


def part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 2 or (len(bits) == 2 and bits[1] in ALLOWED) else None


def test_every_module_is_in_a_part():
    loose = [m for m in MODULES if m.count(".") == 1 and part(m) is None and m not in ("yolov2.__main__",)]
    assert loose == [], f"modules outside the parts {sorted(ALLOWED)}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    mine = part(module)
    if mine is None:  # yolov2 (the lazy public face) and yolov2.__main__ (the CLI) may import anything
        return
    wrong = sorted(d for d in GRAPH[module] if part(d) not in (mine, None, *ALLOWED[mine]))
    assert not wrong, f"{module} ({mine}) imports {wrong}; {mine} may import only {sorted(ALLOWED[mine])}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if d not in MODULES or d == "yolov2":
                continue  # the lazy top-level face imports nothing at import time
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_public_names_and_every_module_import():
    from yolov2 import Darknet, RegionLoss, box_iou, parse_cfg, stock_cfg  # noqa: F401

    for m in MODULES:
        importlib.import_module(m)


def test_every_command_runs_from_the_cli():
    from yolov2.__main__ import COMMANDS

    for cmd in COMMANDS:
        r = subprocess.run([sys.executable, "-m", "yolov2", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-500:])
