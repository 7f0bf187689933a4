"""pytest plugin for the book: nbval executes each chapter once, and the book is rendered from that run.

`pytest --nbval-lax --book-cache=_build/.jupyter_cache book/NN_*.ipynb` runs every chapter through
nbval (one kernel per notebook, cell by cell). This plugin watches that run as a notebook front end
would: cells run with `store_history=True` as nbclient runs them, and every iopub message nbval
reads is also fed to nbclient's own message handling
(`NotebookClient.process_message`: outputs, `clear_output`, display updates, the Output widget
mimic and the widget state that `store_widget_state` keeps). When every code cell of a notebook
passed, the executed notebook (outputs, execution counts, `language_info`, embedded widget state)
is stored in Jupyter Book's jupyter-cache, keyed by the same hash myst-nb computes from the source.
The `jupyter-book build` that follows (`execute_notebooks: cache`) then finds every chapter
cached and executes nothing.

Reference: nbval's `plugin.py` (`IPyNbCell.runtest`) and `kernel.py` (`RunningKernel`);
nbclient's `client.py` (`async_execute`, `process_message`, `set_widgets_metadata`);
myst-nb's `core/execute/cache.py` (`NotebookClientCache`, how the build looks up the cache).

Without `--book-cache` the plugin does nothing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete
from nbval.plugin import IPyNbCell, IPyNbFile

SLOW_CHAPTER_S = 180  # issue 7: no chapter may take more than 3 minutes here


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--book-cache", default=None, metavar="PATH",
                     help="store every notebook that nbval ran without failure in this jupyter-cache "
                          "(Jupyter Book's _build/.jupyter_cache), so the book build executes nothing")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--book-cache")
    if path and (config.option.nbval or config.option.nbval_lax):
        config.pluginmanager.register(BookCache(Path(path)), "yolov2-book-cache")


class Recorder:
    """The front end of one nbval-run notebook: rebuilds the executed notebook from nbval's messages."""

    def __init__(self, nbfile: IPyNbFile) -> None:
        self.path = Path(nbfile.path)
        self.nb = copy.deepcopy(nbfile.nb)  # the source as nbval read it: same hash as myst-nb's
        self.code_index = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
        kernel = nbfile.kernel
        # nbclient's handling, minus its own kernel loop; kc lets the Output widget mimic sync
        # its outputs back to the kernel, as a real front end (and nbclient) does.
        self.client = NotebookClient(self.nb, km=kernel.km, record_timing=False)  # as jupyter-cache
        self.client.kc = kernel.kc
        self.nb.metadata["language_info"] = self._language_info(kernel.kc)
        self.msg_cell: dict[str, int] = {}  # execute_request msg_id -> index in nb.cells
        self.current: int | None = None  # nbval's cell_num (index among code cells) now running
        self.passed: set[int] = set()
        self.problem: str | None = None  # why this notebook cannot be cached
        self.start = time.perf_counter()
        self.seconds = 0.0
        self.cached = False
        self._get = kernel.get_message
        kernel.get_message = self.get_message
        kernel.execute_cell_input = self.execute_cell_input

    @staticmethod
    def _language_info(kc) -> dict:
        # nbclient records the kernel's language_info from kernel_info; nbval never asks for it.
        msg_id = kc.kernel_info()
        while True:
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["language_info"]

    def execute_cell_input(self, source: str, allow_stdin: bool | None = None) -> str:
        # nbval's own call uses store_history=False, under which IPython ignores a trailing `;`
        # and shows the value; nbclient (the book build's executor) stores history.
        msg_id = self.client.kc.execute(source, store_history=True, allow_stdin=allow_stdin,
                                        stop_on_error=False)
        idx = self.code_index[self.current]
        self.msg_cell[msg_id] = idx
        self.nb.cells[idx].outputs = []
        self.client.clear_before_next_output = False  # nbclient resets this per cell
        return msg_id

    def get_message(self, stream: str, timeout: float | None = None) -> dict:
        msg = self._get(stream, timeout=timeout)
        if stream == "iopub":
            # only the replies to a cell's execute_request, as nbclient's _async_poll_output_msg
            idx = self.msg_cell.get(msg["parent_header"].get("msg_id"))
            if idx is not None:
                try:
                    self.client.process_message(msg, self.nb.cells[idx], idx)
                except CellExecutionComplete:
                    pass
        return msg

    def finish(self) -> None:
        """Number the cells as a top-to-bottom run and attach the widget state."""
        self.seconds = time.perf_counter() - self.start
        missing = [n for n in range(len(self.code_index)) if n not in self.passed]
        if missing and self.problem is None:
            self.problem = f"code cells {missing} did not run to completion"
        count = 0
        for idx in self.code_index:
            cell = self.nb.cells[idx]
            if not cell.source.strip():  # nbclient leaves empty cells unnumbered
                cell.execution_count = None
                continue
            count += 1
            cell.execution_count = count
            for out in cell.outputs:
                if out.output_type == "execute_result":
                    out.execution_count = count
        self.client.set_widgets_metadata()

    def store(self, cache_path: Path) -> None:
        get_cache(str(cache_path)).cache_notebook_bundle(
            CacheBundleIn(self.nb, str(self.path.resolve()), data={"execution_seconds": self.seconds}),
            check_validity=False, overwrite=True)  # empty code cells stay unnumbered, as in nbclient
        self.cached = True


class BookCache:
    """Registered by `--book-cache`: one Recorder per notebook nbval runs."""

    def __init__(self, cache_path: Path) -> None:
        self.cache_path = cache_path
        self.recorders: dict[str, Recorder] = {}

    def _recorder(self, item: pytest.Item) -> Recorder | None:
        return self.recorders.get(item.parent.nodeid) if isinstance(item, IPyNbCell) else None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        result = yield  # nbval's IPyNbFile.setup has started the kernel by now
        nbfile = item.parent
        if (isinstance(item, IPyNbCell) and nbfile.nodeid not in self.recorders
                and nbfile.kernel is not None):
            self.recorders[nbfile.nodeid] = Recorder(nbfile)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        rec = self._recorder(item)
        if rec is not None:
            rec.current = item.cell_num

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        rec = self._recorder(item)
        if rec is not None:
            if report.failed and rec.problem is None:
                rec.problem = f"cell {item.cell_num} failed ({report.when})"
            elif report.skipped and rec.problem is None:
                rec.problem = f"cell {item.cell_num} was skipped"
            elif report.when == "call" and report.passed:
                rec.passed.add(item.cell_num)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        rec = self._recorder(item)
        if rec is None or (nextitem is not None and nextitem.parent is item.parent):
            return
        rec.finish()  # the last cell of this notebook: before nbval stops its kernel
        if rec.problem is None:
            rec.store(self.cache_path)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        tr = terminalreporter
        tr.section(f"book chapters executed by nbval (cache: {self.cache_path})")
        for rec in self.recorders.values():
            state = "cached" if rec.cached else f"NOT cached: {rec.problem}"
            slow = f"  SLOW: over {SLOW_CHAPTER_S} s" if rec.seconds > SLOW_CHAPTER_S else ""
            tr.write_line(f"{rec.path.name:<32} {rec.seconds:7.1f} s  {state}{slow}")
