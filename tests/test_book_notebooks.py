"""The book's sources: chapters are committed stripped, named book/NN_slug.ipynb, and all in _toc.yml."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
STRIP = ROOT / "tools" / "strip_notebooks.py"
CHAPTER_NAME = re.compile(r"\d\d[a-z]?_[a-z0-9_]+\.ipynb")  # 06a_... for a chapter split in sections
CHAPTERS = sorted(BOOK.glob("*.ipynb"))


def _load_strip_tool():
    spec = importlib.util.spec_from_file_location("strip_notebooks", STRIP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STRIP_TOOL = _load_strip_tool()


@pytest.fixture
def strip_tool(capsys):
    """Run tools/strip_notebooks.py's main; returns (exit code, stdout, stderr)."""
    def run(*args: str | Path) -> tuple[int, str, str]:
        code = STRIP_TOOL.main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("chapters") or entry.get("sections") or [])

    walk(toc.get("parts") or [])
    walk(toc.get("chapters") or [])
    return files


def test_chapters_are_committed_without_outputs(strip_tool) -> None:
    code, _, err = strip_tool("--check", *CHAPTERS)
    assert code == 0, f"notebooks with outputs (run `make strip`):\n{err}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_name_and_kernel(path: Path) -> None:
    assert CHAPTER_NAME.fullmatch(path.name), f"{path.name}: chapters are named book/NN_slug.ipynb"
    kernel = nbformat.read(path, as_version=4).metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{path.name}: kernelspec '{kernel}', the book runs the venv's python3"


def test_toc_lists_exactly_the_book_sources() -> None:
    listed = toc_files()
    assert len(listed) == len(set(listed)), f"_toc.yml lists a page twice: {listed}"
    missing = [f for f in listed if not any((ROOT / f"{f}{ext}").exists() for ext in (".ipynb", ".md"))]
    assert missing == [], f"_toc.yml lists pages that do not exist: {missing}"
    sources = {str(p.relative_to(ROOT).with_suffix("")) for p in [*BOOK.glob("*.ipynb"), *BOOK.glob("*.md")]}
    assert sources - set(listed) == set(), "pages in book/ missing from _toc.yml (add one line each)"
    chapters = [f for f in listed if CHAPTER_NAME.fullmatch(Path(f).name + ".ipynb")]
    assert chapters == sorted(chapters), "_toc.yml lists the chapters out of their numbered order"


def test_strip_tool_strips_all_but_checked_outputs(strip_tool, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {}}})
    figure = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
    image = nbformat.v4.new_output("display_data", data=figure)
    stream = nbformat.v4.new_output("stream", name="stdout", text="16 layers\n")
    plain = nbformat.v4.new_code_cell("x = 1", execution_count=1, outputs=[stream],
                                      metadata={"execution": {"iopub.status.idle": "2026"}})
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(x)", execution_count=2,
                                        outputs=[copy_node(stream), image])
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), plain, checked]
    path = tmp_path / "99_dirty.ipynb"
    nbformat.write(nb, path)

    code, _, err = strip_tool("--check", path)
    assert code == 1 and "99_dirty.ipynb: need stripping" in err
    assert strip_tool(path)[0] == 0
    out = nbformat.read(path, as_version=4)
    assert (out.cells[1].outputs, out.cells[1].execution_count, out.cells[1].metadata) == ([], None, {})
    assert out.cells[2].execution_count == 2  # nbval compares a cell only if it has a count
    assert [o.output_type for o in out.cells[2].outputs] == ["stream", "display_data"]
    assert out.cells[2].outputs[1].data == {"text/plain": "<Figure>"}  # images dropped, text kept
    assert "widgets" not in out.metadata
    assert strip_tool("--check", path)[0] == 0


def test_strip_tool_names_an_unreadable_notebook(strip_tool, tmp_path: Path) -> None:
    bad = tmp_path / "01_bad.ipynb"
    bad.write_text("{not json")
    code, _, err = strip_tool("--check", bad)
    assert code == 2 and f"{bad}: cannot read notebook" in err


def copy_node(node: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return nbformat.from_dict(dict(node))


def _markdown(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


EXERCISE = re.compile(r"```\{exercise\}\s*\n:label:\s*(\S+)")
SOLUTION = re.compile(r"```\{solution(?:-start)?\}\s+(\S+)")


def test_the_book_has_its_chapters_glossary_and_appendix() -> None:
    files = toc_files()
    chapters = [f for f in files if CHAPTER_NAME.fullmatch(Path(f).name + ".ipynb")]
    assert len(chapters) >= 13, f"{len(chapters)} chapters in _toc.yml: {chapters}"
    for page in ("book/01b_yolov1_to_yolov2", "book/04b_darknet19", "book/glossary",
                 "book/appendix_golden"):
        assert page in files, f"_toc.yml does not list {page}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_goals_and_ends_with_a_summary_and_exercises(path: Path) -> None:
    cells = _markdown(path)
    opening = "\n".join(cells[:2]).lower()
    assert "you will learn" in opening, f"{path.name}: the opening does not say what the reader will learn"
    assert "assumes" in opening, f"{path.name}: the opening does not say what it assumes"
    text = "\n".join(cells)
    assert re.search(r"(?m)^## Summary\s*$", text), f"{path.name}: no '## Summary' section"
    exercises = EXERCISE.findall(text)
    solved = set(SOLUTION.findall(text))
    assert len(exercises) >= 3, f"{path.name}: {len(exercises)} exercises, the book asks for >= 3"
    assert len(set(exercises)) == len(exercises), f"{path.name}: an exercise label is used twice"
    missing = [label for label in exercises if label not in solved]
    assert missing == [], f"{path.name}: exercises without a solution: {missing}"
    summary = text.index("## Summary")
    first = min(text.index(f":label: {label}") for label in exercises)
    assert summary < first, f"{path.name}: the Summary comes after the exercises"
