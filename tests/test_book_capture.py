"""book/conftest.py: the notebook nbval executed, as stored for the book build, equals nbclient's run.

Oracle: nbclient (what jupyter-book itself executes notebooks with) runs the same fixture notebook;
the notebook the plugin rebuilt from nbval's messages must have the same outputs, execution
counts, language_info and widget state (model ids aside, which are random), and must be found by
the lookup myst-nb does in cache mode. A notebook with a failing cell must not be cached.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_cache import get_cache
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "book" / "capture_cases.ipynb"
MODEL_ID = re.compile(r"[0-9a-f]{32}")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def run_nbval(tmp_path: Path, notebook: Path) -> subprocess.CompletedProcess:
    """`pytest --nbval-lax --book-cache` on notebook, with the book's conftest, in tmp_path."""
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "conftest.py")
    target = tmp_path / notebook.name
    if notebook != target:
        shutil.copy(notebook, target)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
           "--nbval-lax", "--book-cache", str(tmp_path / "cache"), target.name]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def canonical(nb: nbformat.NotebookNode) -> str:
    """What must agree: outputs (streams merged, as the book renders them), counts, metadata.

    Widget model ids are random: each is renamed by the order a walk from the cells' widget views
    through the models' references reaches it, which does not depend on the ids.
    """
    cells = [{"execution_count": c.execution_count, "outputs": merge_streams(c.outputs)}
             for c in nb.cells if c.cell_type == "code"]
    widgets = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {})
    state = widgets.get("state", {})
    order: list[str] = []

    def visit(model_id: str) -> None:
        if model_id in state and model_id not in order:
            order.append(model_id)
            for ref in MODEL_ID.findall(json.dumps(state[model_id], sort_keys=True)):
                visit(ref)

    for cell in cells:
        for out in cell["outputs"]:
            visit(out.get("data", {}).get("application/vnd.jupyter.widget-view+json", {}).get("model_id", ""))
    unreached = sorted(set(state) - set(order),
                       key=lambda m: MODEL_ID.sub("?", json.dumps(state[m], sort_keys=True)))
    names = {m: f"model{k}" for k, m in enumerate(order + unreached)}
    text = json.dumps({"cells": cells, "widgets": widgets, "language_info": nb.metadata.get("language_info")},
                      sort_keys=True)
    renamed = MODEL_ID.sub(lambda m: names.get(m.group(), "unknown-model"), text)
    return json.dumps(json.loads(renamed), sort_keys=True, indent=1)  # sorted by the new names


def merge_streams(outputs: list) -> list:
    merged: list = []
    for out in copy.deepcopy(outputs):
        if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                and merged[-1].name == out.name):
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("capture")
    return run_nbval(tmp, FIXTURE), tmp


def test_nbval_run_is_cached_as_nbclient_would_execute_it(captured) -> None:
    proc, tmp = captured
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"capture_cases\.ipynb\s+[\d.]+ s\s+cached", proc.stdout), proc.stdout
    source = nbformat.read(FIXTURE, as_version=4)
    # the lookup myst-nb's cache mode does: the build will find this notebook executed
    _, from_nbval = get_cache(str(tmp / "cache")).merge_match_into_notebook(source)

    reference = copy.deepcopy(source)
    NotebookClient(reference, timeout=120, record_timing=False,
                   resources={"metadata": {"path": str(tmp)}}).execute()
    assert canonical(from_nbval) == canonical(reference)


def test_captured_notebook_has_what_the_fixture_produces(captured) -> None:
    """Guards the comparison above against both sides losing the same thing."""
    proc, tmp = captured
    nb = get_cache(str(tmp / "cache")).merge_match_into_notebook(nbformat.read(FIXTURE, as_version=4))[1]
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert outputs[0][-1].data["text/plain"] == "2"
    assert [o.data["text/plain"] for o in outputs[1]] == ["'second'"]  # update_display_data applied
    assert [o.text for o in outputs[2]] == ["kept\n"]  # clear_output(wait=True) applied
    state = nb.metadata.widgets[WIDGET_STATE]["state"]
    sliders = {m["state"]["description"]: m["state"]["value"] for m in state.values()
               if m["model_name"] == "IntSliderModel"}
    assert sliders == {"n": 5, "k": 4}  # n: the later cell's update reached the stored state
    captured_text = sorted(o.get("text") for m in state.values() if m["model_name"] == "OutputModel"
                           for o in m["state"]["outputs"])
    assert captured_text == ["16\n", "inside the Output widget\n"]  # not in the cells' outputs
    assert not any(o.get("text") == "16\n" for cell in outputs for o in cell)
    assert [c.execution_count for c in nb.cells if c.cell_type == "code"] == [1, 2, 3, None, 4, 5, 6]


def test_failing_notebook_is_not_cached(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ok')"),
                                         nbformat.v4.new_code_cell("raise ValueError('chapter bug')")],
                                  metadata=nbformat.read(FIXTURE, as_version=4).metadata)
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    proc = run_nbval(tmp_path, path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failing.ipynb" in proc.stdout and "NOT cached: cell 1 failed (call)" in proc.stdout
    with pytest.raises(KeyError):
        get_cache(str(tmp_path / "cache")).match_cache_notebook(nbformat.read(path, as_version=4))
