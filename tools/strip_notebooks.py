"""Strip the book's notebooks for committing: no outputs, no execution counts, no widget state.

Cells marked `# NBVAL_CHECK_OUTPUT` (or tagged `nbval-check-output`) keep their text outputs and
execution count: they are the reference that `pytest --nbval-lax` compares the fresh run against.
Their images are dropped (nbval does not compare images) to keep the repository small.

    python tools/strip_notebooks.py book/*.ipynb          # strip in place
    python tools/strip_notebooks.py --check book/*.ipynb  # exit 1 and name the notebooks not stripped
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

CHECK_MARKER = "NBVAL_CHECK_OUTPUT"
CHECK_TAG = "nbval-check-output"
KEEP_MIME_PREFIX = "text/"  # what a checked cell keeps of display data


def is_checked(cell: nbformat.NotebookNode) -> bool:
    """nbval's rule: a comment line that is exactly the marker, or the cell tag."""
    lines = (ln.strip() for ln in cell.source.splitlines())
    comments = (ln.lstrip("#").strip() for ln in lines if ln.startswith("#"))
    return CHECK_MARKER in comments or CHECK_TAG in cell.metadata.get("tags", [])


def _keep_text(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
    if "data" in output:
        output.data = {k: v for k, v in output.data.items() if k.startswith(KEEP_MIME_PREFIX)}
    return output


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip nb in place (see the module docstring) and return it."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # nbclient's record_timing
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            cell.outputs = [_keep_text(o) for o in cell.outputs if o.output_type != "display_data"
                            or any(k.startswith(KEEP_MIME_PREFIX) for k in o.get("data", {}))]
        else:
            cell.outputs = []
            cell.execution_count = None
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if any notebook needs stripping")
    args = ap.parse_args(argv)
    dirty = []
    for path in args.notebooks:
        try:
            before = path.read_text(encoding="utf-8")
            nb = nbformat.reads(before, as_version=4)
        except (OSError, ValueError) as err:  # nbformat's NotJSONError is a ValueError
            print(f"{path}: cannot read notebook: {err}", file=sys.stderr)
            return 2
        after = nbformat.writes(strip(nb)) + "\n"
        if after != before:
            dirty.append(path)
            if not args.check:
                path.write_text(after, encoding="utf-8")
    verb = "need stripping (run `make strip`)" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}", file=sys.stderr if args.check else sys.stdout)
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
