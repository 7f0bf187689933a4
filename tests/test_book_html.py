"""The built book in a real browser, offline; and a widget driven live through Voila.

Debian's chromium, driven by Playwright (`executable_path`: no browser download), opens every page
that `_toc.yml` lists from `_build/html` on disk (file://) and checks it against the executed
notebook the page was rendered from (in the build's jupyter-cache): each figure is an `<img>` with a
non-zero natural size, each math element was typeset by the vendored MathJax (no raw TeX left),
each embedded widget was rendered by the vendored html-manager, and the page made no request but
file:// ones, all of which succeeded. The live test serves a notebook with Voila on 127.0.0.1,
changes a control in the browser and waits for the kernel's answer.

Run after the book is built: `make test` runs nbval on the chapters, builds the book from that run,
then this file. Skips only where chromium is not installed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
# The executed notebooks the pages were rendered from. (Not _build/jupyter_execute/: in cache mode
# myst-nb writes the unexecuted source there.)
CACHE = ROOT / "_build" / ".jupyter_cache"
SHOTS = ROOT / "_build" / "browser"  # a screenshot of every page, for a person to look at
CHROMIUM = Path(os.environ.get("YOLOV2_CHROMIUM", "/usr/bin/chromium"))
# Without the networking flags chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove-cell", "remove_output", "remove_cell"}
TIMEOUT_MS = 60_000
# MathJax typesets after the deferred script loads; this waits for it to finish.
MATHJAX_DONE = "async () => { if (window.MathJax?.startup?.promise) await MathJax.startup.promise; }"
VIEWPORT_WIDTH = 1280  # px: the window the legibility test measures at (issue 14)


def toc_pages() -> list[str]:
    """Docnames of every page `_toc.yml` lists (root, chapters, parts, sections), in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("chapters") or entry.get("sections") or [])

    walk(toc.get("parts") or [])
    walk(toc.get("chapters") or [])
    return [str(Path(p).with_suffix("")) for p in pages]


@dataclass
class Expected:
    """What a page must show, counted from the notebook it was rendered from."""

    figures: int = 0  # image outputs of visible cells
    widget_views: int = 0  # widget outputs of visible cells
    widget_figures: int = 0  # images inside Output widgets' embedded state
    math: bool = False  # the source has $...$ or $$...$$


def executed_notebook(source: Path) -> nbformat.NotebookNode:
    """The executed version of a chapter, as the build found it in the cache."""
    from jupyter_cache import get_cache

    try:
        return get_cache(str(CACHE)).merge_match_into_notebook(nbformat.read(source, as_version=4))[1]
    except KeyError:
        pytest.fail(f"{source.name} has no executed version in {CACHE}: build the book first "
                    "(`make book`, or `make test`)")


def expected_for(docname: str) -> Expected:
    sources = [ROOT / f"{docname}{ext}" for ext in (".ipynb", ".md")]
    source = next((s for s in sources if s.exists()), None)
    if source is None:
        pytest.fail(f"_toc.yml lists {docname}, but neither {docname}.ipynb nor {docname}.md exists")
    if source.suffix == ".md":
        return Expected(math=bool(re.search(r"\$[^$\s]", source.read_text())))
    nb = executed_notebook(source)
    exp = Expected(math=any(re.search(r"\$[^$\s]", c.source) for c in nb.cells if c.cell_type == "markdown"))
    for cell in nb.cells:
        if cell.cell_type != "code" or HIDDEN_OUTPUT_TAGS & set(cell.metadata.get("tags", [])):
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:  # myst-nb renders the widget, not its text/image fallbacks
                exp.widget_views += 1
            elif any(k.startswith("image/") for k in data):
                exp.figures += 1
    for model in nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}).values():
        for out in model["state"].get("outputs", []) if model["model_name"] == "OutputModel" else []:
            exp.widget_figures += any(k.startswith("image/") for k in out.get("data", {}))
    return exp


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): `apt-get install -y chromium` "
                    "(as root; `make test` does it where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Traffic:
    """Every request a page made, sorted into what is allowed and what is not."""

    blocked: list[str]
    failed: list[str]
    errors: list[str]


@contextmanager
def open_page(browser, url: str, allowed: Callable[[str], bool]) -> Iterator[tuple[object, Traffic]]:
    """A fresh page at url; requests that `allowed` rejects are aborted and recorded."""
    context = browser.new_context(service_workers="block", viewport={"width": VIEWPORT_WIDTH, "height": 900})
    traffic = Traffic([], [], [])

    def route(r) -> None:
        if allowed(r.request.url):
            r.continue_()
        else:
            traffic.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("requestfailed", lambda req: traffic.failed.append(f"{req.url} ({req.failure})"))
    page.on("websocket", lambda ws: None if allowed(ws.url) else traffic.blocked.append(ws.url))
    page.on("pageerror", lambda err: traffic.errors.append(str(err)))
    try:
        page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
        yield page, traffic
    finally:
        context.close()


def built_page(docname: str) -> Path:
    page = HTML / f"{docname}.html"
    if not page.exists():
        pytest.fail(f"{page} is missing: build the book first (`make book`, or `make test`)")
    return page


@pytest.mark.parametrize("docname", toc_pages())
def test_page_renders_offline(browser, docname: str) -> None:
    exp = expected_for(docname)
    url = built_page(docname).as_uri()
    with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES)) as (page, tr):
        # MathJax typesets after the deferred script loads; wait for it to finish.
        page.evaluate(MATHJAX_DONE)
        if exp.widget_views:
            page.wait_for_function(  # html-manager renders each view into a .widget-subarea
                "n => [...document.querySelectorAll('.widget-subarea')]"
                ".filter(e => e.children.length).length >= n", arg=exp.widget_views, timeout=TIMEOUT_MS)
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=TIMEOUT_MS)
        seen = page.evaluate("""() => {
            const ok = i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0;
            const imgs = sel => [...document.querySelectorAll(sel)];
            const maths = imgs('.math');
            return {
                broken: [...document.images].filter(i => !ok(i)).map(i => i.src.slice(0, 80)),
                figures: imgs('.cell_output img').filter(i => !i.closest('.widget-subarea') && ok(i)).length,
                widgets: imgs('.widget-subarea').filter(e => e.children.length).length,
                widget_figures: imgs('.widget-subarea img').filter(ok).length,
                math: maths.length,
                untypeset: maths.filter(m => !m.querySelector('mjx-container'))
                                .map(m => m.textContent.slice(0, 60)),
                text: document.body.innerText,
            };
        }""")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{docname.replace('/', '__')}.png"), full_page=True)
    assert tr.blocked == [], f"{docname}: requests that left the disk: {tr.blocked}"
    assert tr.failed == [], f"{docname}: local files that failed to load (not vendored?): {tr.failed}"
    assert tr.errors == [], f"{docname}: JavaScript errors: {tr.errors}"
    assert seen["broken"] == [], f"{docname}: images that did not load: {seen['broken']}"
    assert seen["figures"] == exp.figures, f"{docname}: {seen['figures']} figures, notebook has {exp.figures}"
    assert seen["widgets"] >= exp.widget_views, f"{docname}: {seen['widgets']}/{exp.widget_views} widgets"
    assert seen["widget_figures"] >= exp.widget_figures, f"{docname}: widget figures missing"
    assert "Error displaying widget" not in seen["text"]
    if exp.math:
        assert seen["math"] > 0, f"{docname}: the source has math but the page has no math element"
    assert seen["untypeset"] == [], f"{docname}: math left as raw TeX: {seen['untypeset']}"
    assert "$$" not in seen["text"], f"{docname}: raw $$ TeX left in the page"


# ---- legibility: what fits the column at a 1280 px window (issue 14) -----------------------------

MIN_SHRINK = 0.7  # a figure shown below 70% of its natural width has its text shrunk below its font size

# Measured on the page as a reader opens it, then with every collapsed block (hide-input cells,
# solution dropdowns) opened, so that what hides behind a click is measured too.
LEGIBILITY_JS = """shrink => {
    const article = document.querySelector('article') || document.body;
    const all = sel => [...article.querySelectorAll(sel)];
    document.querySelectorAll('details').forEach(d => { d.open = true; });
    document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
    const overflows = e => e.scrollWidth > e.clientWidth + 1;
    const first = t => t.replace(/\\s+/g, ' ').trim().slice(0, 60);
    const code = all('div.highlight pre');
    const eqs = all('mjx-container[display="true"]');
    const eqOver = eqs.filter(c => {
        const m = c.querySelector('mjx-math');
        return overflows(c) || (m && m.getBoundingClientRect().width > c.clientWidth + 1);
    });
    const imgs = all('img').filter(i => i.naturalWidth > 0 && i.getBoundingClientRect().width > 0);
    const ratio = i => i.getBoundingClientRect().width / i.naturalWidth;
    const exercises = all('div.exercise');
    const solved = exercises.filter(e => e.id && all('div.solution').some(
        s => s.querySelector(`a[href="#${e.id}"]`)));
    // Exercises written as a plain list under an "Exercises" heading: none has a solution to open.
    const plain = all('section[id^="exercises"]').filter(s => !s.querySelector('div.exercise'))
        .map(s => s.querySelectorAll(':scope > ol > li, :scope > ul > li').length)
        .reduce((a, b) => a + b, 0);
    const text = document.body.innerText;
    return {
        code: code.length, code_over: code.filter(overflows).map(e => first(e.textContent)),
        eqs: eqs.length, eq_over: eqOver.map(c => first(c.textContent)),
        figures: imgs.length,
        shrunk: imgs.filter(i => ratio(i) < shrink).map(
            i => `${i.naturalWidth}px shown at ${Math.round(i.getBoundingClientRect().width)}px`),
        upscaled: imgs.filter(i => ratio(i) > 1.05).length,
        nbval: (text.match(/NBVAL_/g) || []).length,
        exercises: exercises.length + plain, solved: solved.length,
        unsolved: exercises.filter(e => !solved.includes(e)).map(e => e.id || first(e.textContent)),
    };
}"""


def legibility_row(docname: str, m: dict) -> str:
    return (f"{docname:<28} {len(m['code_over']):>4}/{m['code']:<4} {len(m['eq_over']):>3}/{m['eqs']:<3} "
            f"{len(m['shrunk']):>3}/{m['figures']:<3} {m['upscaled']:>4} {m['nbval']:>6} "
            f"{m['solved']:>3}/{m['exercises']:<3}")


LEGIBILITY_HEADER = (f"{'page':<28} {'code>col':>9} {'eq>col':>7} {'fig<70%':>7} {'up':>4} {'NBVAL_':>6} "
                     f"{'ex+sol':>7}")


def test_book_is_legible(browser) -> None:
    """At a 1280 px window, on every page: no code block (input or output) and no display equation
    wider than its column (scrolling sideways), no figure shown below 70% of its natural width, no
    nbval marker as text, and every exercise with a solution the reader can open.

    Prints (and writes to _build/browser/legibility.txt) one row per page: overflowing/all code blocks,
    overflowing/all display equations, shrunk/all figures, figures upscaled over 105% (reported, a
    blurry image), NBVAL_ occurrences, exercises with a solution/all exercises; then fails listing what
    each failing page shows. A screenshot of each page as a reader opens it goes to _build/browser/."""
    rows, problems = [LEGIBILITY_HEADER], []
    for docname in toc_pages():
        url = built_page(docname).as_uri()
        with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES)) as (page, _):
            page.evaluate(MATHJAX_DONE)
            page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=TIMEOUT_MS)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"legible-{docname.replace('/', '__')}.png"), full_page=True)
            m = page.evaluate(LEGIBILITY_JS, MIN_SHRINK)
        rows.append(legibility_row(docname, m))
        found = [f"{len(m['code_over'])} code blocks wider than the column: {m['code_over'][:3]}"
                 if m["code_over"] else "",
                 f"display equations wider than the column: {m['eq_over']}" if m["eq_over"] else "",
                 f"figures below {MIN_SHRINK:.0%} of their width: {m['shrunk']}" if m["shrunk"] else "",
                 f"{m['nbval']} NBVAL_ markers as text" if m["nbval"] else "",
                 f"{m['exercises'] - m['solved']} exercises without a solution ({m['unsolved']})"
                 if m["solved"] < m["exercises"] else ""]
        problems += [f"{docname}: {f}" for f in found if f]
    table = "\n".join(rows)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "legibility.txt").write_text(table + "\n")
    print("\n" + table)
    assert problems == [], table + "\n\n" + "\n".join(problems)


EXTERNAL_REF = re.compile(r"""<(?:script|link|img|iframe|source|audio|video|embed)\b[^>]*?"""
                          r"""\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", re.IGNORECASE)
CSS_EXTERNAL = re.compile(r"""(?:@import\s+(?:url\()?|url\()\s*["']?((?:https?:)?//[^"')\s]+)""",
                          re.IGNORECASE)


def test_built_html_references_no_external_resources() -> None:
    """Static twin of the browser check, over every built file: no tag or stylesheet loads from a URL."""
    pages = sorted(HTML.rglob("*.html"))
    if not pages:
        pytest.fail(f"no HTML under {HTML}: build the book first (`make book`, or `make test`)")
    found = [f"{p.relative_to(HTML)}: {m}" for p in pages for m in EXTERNAL_REF.findall(p.read_text())]
    for css in HTML.rglob("*.css"):
        found += [f"{css.relative_to(HTML)}: {m}" for m in CSS_EXTERNAL.findall(_strip_css_comments(css))]
    assert found == []


def _strip_css_comments(path: Path) -> str:
    return re.sub(r"/\*.*?\*/", "", path.read_text(errors="replace"), flags=re.DOTALL)


# ---- live widgets through Voila ------------------------------------------------------------------


@dataclass(frozen=True)
class LiveWidget:
    """A notebook whose widget the live test drives: change `control`, watch `output` change.

    control: CSS selector of a slider handle (pressed with ArrowRight) or of a <select> (moved to
    its next option). check: optional extra assertion on the output's text before and after.
    """

    notebook: str  # relative to the repo root
    control: str
    output: str
    check: Callable[[str, str], None] | None = None


def _anchor_text(before: str, after: str) -> None:
    from yolov2.darknet.cfg import parse_cfg, stock_cfg
    from yolov2.darknet.region import RegionConfig

    anchors = RegionConfig.from_section(parse_cfg(stock_cfg("yolov2-voc"))[-1]).anchors
    assert before.strip() == f"anchor 0: w={anchors[0][0]:.4f} h={anchors[0][1]:.4f} cells"
    assert after.strip() == f"anchor 1: w={anchors[1][0]:.4f} h={anchors[1][1]:.4f} cells"


def _inspector_text(before: str, after: str) -> None:
    """The inspector's summary (yolov2.book.widgets.summary_lines) for the next image: each image's truths
    take one positive slot each, fewer only where a later truth overwrote an earlier one's."""
    counts = re.compile(r"image (\d+): (\d+) truths → (\d+) positive slots, (\d+) ignored")
    first, second = counts.search(before), counts.search(after)
    assert first and second, f"no assignment summary in {before!r} / {after!r}"
    assert (first[1], second[1]) == ("0", "1"), "the image dropdown moved to the next image"
    for m, text in ((first, before), (second, after)):
        overwritten = text.count("overwritten by a later truth")
        assert int(m[3]) == int(m[2]) - overwritten >= 1, text


LIVE_WIDGETS = [
    LiveWidget("tests/fixtures/book/live_anchor_slider.ipynb", control=".widget-slider .noUi-handle",
               output=".widget-output", check=_anchor_text),
    # the target-assignment inspector (book chapter 6b): the first dropdown is the image
    LiveWidget("book/06b_inspector.ipynb", control=".widget-dropdown select",
               output=".yolov2-inspector-summary", check=_inspector_text),
]


# Voila 0.5's own "lab" template links Font Awesome from a CDN (voila/templates/lab/index.html.j2).
# The test aborts that request like any other non-local one, and tolerates only it.
VOILA_TEMPLATE_CDN = "https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate a server, killing it if it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def voila(notebook: Path, log: Path) -> Iterator[str]:
    """Serve notebook with Voila on 127.0.0.1; yields its URL. The kernel is this venv's python."""
    port = _free_port()
    cmd = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=notebook.parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"voila did not listen on port {port}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        _stop(proc, timeout=15)


def _text(page, selector: str) -> str:
    return page.evaluate("sel => document.querySelector(sel)?.innerText ?? ''", selector)


@pytest.mark.parametrize("case", LIVE_WIDGETS, ids=lambda c: Path(c.notebook).stem)
def test_widget_live_in_voila(browser, case: LiveWidget) -> None:
    notebook = ROOT / case.notebook
    assert notebook.exists(), f"{notebook} not found"
    log = ROOT / "_build" / "browser" / f"voila-{notebook.stem}.log"
    with voila(notebook, log) as url:
        local = url.rstrip("/").split("//", 1)[1]  # 127.0.0.1:PORT, for http:// and ws://
        with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES) or u.split("//", 1)[-1]
                       .startswith(local)) as (page, tr):
            control = page.wait_for_selector(case.control, timeout=TIMEOUT_MS)
            page.wait_for_function("sel => (document.querySelector(sel)?.innerText ?? '').trim() !== ''",
                                   arg=case.output, timeout=TIMEOUT_MS)
            before = _text(page, case.output)
            if control.evaluate("e => e.tagName") == "SELECT":
                options = control.evaluate("e => [...e.options].map(o => o.value)")
                current = control.evaluate("e => e.value")
                control.select_option(options[(options.index(current) + 1) % len(options)])
            else:
                control.focus()
                page.keyboard.press("ArrowRight")
            page.wait_for_function("([sel, old]) => (document.querySelector(sel)?.innerText ?? '') !== old",
                                   arg=[case.output, before], timeout=TIMEOUT_MS)
            after = _text(page, case.output)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"voila-{notebook.stem}.png"), full_page=True)
    others = [u for u in tr.blocked if not u.startswith(VOILA_TEMPLATE_CDN)]
    assert others == [], f"Voila page requested non-local resources: {others}"
    assert tr.errors == [], f"JavaScript errors in the Voila page: {tr.errors}"
    if case.check:
        case.check(before, after)


PLAYGROUND = ROOT / "tests" / "fixtures" / "book" / "playground.ipynb"
PLAYGROUND_COUNT = re.compile(r"(\d+) boxes at thresh ([\d.]+)")


def _playground_detector_count(thresh: float, tmp: Path) -> int:
    """What `Detector` returns at thresh on the fixture's image: the demo model, synthetic image
    000002 of seed 0 (the fixture makes the same three images in its own temporary folder)."""
    from yolov2.darknet.cfg import stock_cfg
    from yolov2.darknet.model import Darknet
    from yolov2.data.image import read_image
    from yolov2.data.synth import make_synthetic_voc
    from yolov2.detect.detector import Detector

    net = Darknet(stock_cfg("yolov2-tiny-synth"))
    net.load_weights(ROOT / "data" / "yolov2-tiny-synth.weights")
    root = make_synthetic_voc(tmp / "synth", 0, 3, seed=0)
    return len(Detector(net, thresh=thresh)(read_image(root / "VOC2007" / "JPEGImages" / "000002.jpg")))


def test_playground_threshold_slider_live_in_voila(browser, tmp_path) -> None:
    """The detection playground (book chapter 8) in Voila: moving the threshold slider down with the
    keyboard redraws, and the number of boxes drawn is the number `Detector` returns there."""
    from yolov2.book.playground import COUNT_CLASS, THRESH_CLASS

    steps = 12  # .50 -> .38: 000002 has 5 boxes at .5, 6 at .38
    log = ROOT / "_build" / "browser" / "voila-playground.log"
    count, thresh = f".{COUNT_CLASS}", f".{THRESH_CLASS}"
    with voila(PLAYGROUND, log) as url:
        local = url.rstrip("/").split("//", 1)[1]
        with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES) or u.split("//", 1)[-1]
                       .startswith(local)) as (page, tr):
            page.wait_for_function("sel => (document.querySelector(sel)?.innerText ?? '').trim() !== ''",
                                   arg=thresh, timeout=TIMEOUT_MS)
            before = _text(page, count)
            handle = page.wait_for_selector(".widget-slider .noUi-handle", timeout=TIMEOUT_MS)  # thresh first
            handle.focus()
            for _ in range(steps):
                page.keyboard.press("ArrowLeft")
            page.wait_for_function("([sel, want]) => document.querySelector(sel)?.innerText === want",
                                   arg=[thresh, "0.38"], timeout=TIMEOUT_MS)
            after = _text(page, count)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "voila-playground.png"), full_page=True)
    others = [u for u in tr.blocked if not u.startswith(VOILA_TEMPLATE_CDN)]
    assert others == [], f"Voila page requested non-local resources: {others}"
    assert tr.errors == [], f"JavaScript errors in the Voila page: {tr.errors}"
    first, second = PLAYGROUND_COUNT.search(before), PLAYGROUND_COUNT.search(after)
    assert first and second, f"no box count in {before!r} / {after!r}"
    assert first[2] == "0.50" and int(first[1]) == _playground_detector_count(0.5, tmp_path / "a")
    assert second[2] == "0.38" and int(second[1]) == _playground_detector_count(0.38, tmp_path / "b")
    assert first[1] != second[1], "the threshold moved but the drawn boxes did not change"


# The training view's parts (yolov2.book.training_view's CSS classes), read in the page
STATUS_JS = "(document.querySelector('.yolov2-training-status')?.innerText ?? '')"
CURVES_JS = "(document.querySelector('img.yolov2-training-curves')?.src ?? '')"
LOGGED_RE = r"(\d+) iterations logged"


def _logged(page) -> int:
    """The number of iterations the training view's status reports."""
    m = re.search(LOGGED_RE, page.evaluate(f"() => {STATUS_JS}"))
    return int(m[1]) if m else -1


def test_training_view_live_in_voila(browser) -> None:
    """The live training view in Voila: its curves grow while the run goes, Stop ends the run at an
    iteration boundary (the status says stopped and names the checkpoint; no iteration follows)."""
    notebook = ROOT / "tests/fixtures/book/training_view.ipynb"
    log = ROOT / "_build" / "browser" / "voila-training_view.log"
    grown = (f"([n, src]) => {{ const m = /{LOGGED_RE}/.exec({STATUS_JS}); "
             f"return m !== null && +m[1] > n + 2 && {CURVES_JS} !== src; }}")
    with voila(notebook, log) as url:
        local = url.rstrip("/").split("//", 1)[1]
        with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES) or u.split("//", 1)[-1]
                       .startswith(local)) as (page, tr):
            page.wait_for_selector(".yolov2-training-stop", timeout=TIMEOUT_MS)
            page.wait_for_function(f"() => /[1-9][0-9]* iterations logged/.test({STATUS_JS}) && "
                                   f"{CURVES_JS} !== ''", timeout=TIMEOUT_MS)
            first, src = _logged(page), page.evaluate(f"() => {CURVES_JS}")
            # the curves grow: more iterations logged, and a new figure drawn
            page.wait_for_function(grown, arg=[first, src], timeout=TIMEOUT_MS)
            page.click(".yolov2-training-stop")
            page.wait_for_function(f"() => {STATUS_JS}.includes('stopped')", timeout=TIMEOUT_MS)
            status = page.evaluate(f"() => {STATUS_JS}")
            stopped = _logged(page)
            time.sleep(3)  # a run still going would log more
            after = _logged(page)
            disabled = page.evaluate("() => document.querySelector('.yolov2-training-stop')?.disabled")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "voila-training_view.png"), full_page=True)
    assert stopped > first + 2 and after == stopped, (first, stopped, after)
    assert f"batch {stopped} of 100000" in status and "checkpoint written" in status, status
    assert disabled, "the Stop button stays enabled after the run ended"
    others = [u for u in tr.blocked if not u.startswith(VOILA_TEMPLATE_CDN)]
    assert others == [], f"Voila page requested non-local resources: {others}"
    assert tr.errors == [], f"JavaScript errors in the Voila page: {tr.errors}"


# ---- live widgets in JupyterLab ------------------------------------------------------------------
#
# What a reader does after `make lab`: open a notebook, Run > Run All Cells, move a control. What was
# found to work (JupyterLab 4, Playwright, headless chromium):
# - The server is `make lab`'s own command (read from `make -n lab`) with its root_dir swapped for a
#   temporary tree: JupyterLab writes outputs back into the notebooks it runs, so it serves copies.
#   The tree mirrors the repository (real folders along each notebook's path, the notebook copied,
#   every other entry a symlink), so a notebook's relative paths (`../data/...`) still resolve.
# - Workspaces and user settings go to the same temporary folder: each case opens its notebook in its
#   own workspace (`/lab/workspaces/<name>/tree/<path>`), so no tab of an earlier case is restored,
#   and the reader's own settings do not apply. One setting is written: `windowingMode: "none"`, so
#   that every cell is in the DOM (JupyterLab's default virtualises cells off screen).
# - "Run All Cells" is the Run menu's item whose `data-command` is `runmenu:run-all` (Lumino menu
#   items carry their command id; the Run menu's own command, which runs `notebook:run-all-cells` on
#   the current notebook). JupyterLab has no default keyboard shortcut for it. Clicking the item
#   right after the page loaded ran nothing (the prompt stayed `[ ]:`): click into the notebook
#   first (a cell's prompt), which makes it the current widget, then open the menu. Cells are done
#   when no input prompt shows `[*]:`; Accel+S (Control+S here) saves, and the saved copy on
#   disk is read back: every code cell has an execution count and no output is an error.
# - ipywidgets render in JupyterLab with the same DOM as in Voila (`.widget-slider .noUi-handle`,
#   `.widget-dropdown select`, the package's own CSS classes); a focused slider handle takes
#   ArrowLeft/ArrowRight (the notebook binds no command-mode shortcut to them).
# - The page may request only 127.0.0.1:PORT (http and ws) and data:/blob:/about: URLs; JupyterLab's
#   assets are served by the server. The news feed is off (`--LabApp.news_url=`).

LAB_RUN_TIMEOUT_MS = 600_000  # all cells of a notebook, on a slow shared CPU
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no "notified about official Jupyter news?" toast over the notebook
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}
PLAYGROUND_COUNT_CLASS = "yolov2-playground-count"  # yolov2.book.playground.COUNT_CLASS (asserted)


@dataclass(frozen=True)
class LabWidget:
    """A notebook run in JupyterLab whose widget the test drives: act on `control`, watch `output`.

    control: CSS selector; a <select> moves to its next option, a <button> is clicked, anything else
    (a slider handle) is focused and `keys` are pressed. until: a regex the output's text must match
    after the action (default: any change). check(before, after): assertions on the output's text.
    """

    notebook: str  # relative to the repo root; a copy is served
    control: str
    output: str
    keys: tuple[str, ...] = ("ArrowRight",)
    until: str | None = None
    check: Callable[[str, str], None] | None = None


def _playground_counts(before: str, after: str) -> None:
    """The playground's count line, before and after 12 ArrowLeft presses: what `Detector` returns."""
    import tempfile

    first, second = PLAYGROUND_COUNT.search(before), PLAYGROUND_COUNT.search(after)
    assert first and second, f"no box count in {before!r} / {after!r}"
    with tempfile.TemporaryDirectory() as tmp:
        assert first[2] == "0.50" and int(first[1]) == _playground_detector_count(0.5, Path(tmp) / "a")
        assert second[2] == "0.38" and int(second[1]) == _playground_detector_count(0.38, Path(tmp) / "b")
    assert first[1] != second[1], "the threshold moved but the drawn boxes did not change"


def _training_stopped(before: str, after: str) -> None:
    """The training view's status line: running before Stop, stopped with a checkpoint after."""
    assert "stopped" not in before, before
    assert "stopped" in after and "checkpoint written" in after, after


LAB_WIDGETS = [
    # the detection playground (book chapter 8): thresh .50 -> .38 (000002: 5 boxes at .5, 6 at .38)
    LabWidget("tests/fixtures/book/playground.ipynb", control=".widget-slider .noUi-handle",
              output=f".{PLAYGROUND_COUNT_CLASS}", keys=("ArrowLeft",) * 12,
              until=r"boxes at thresh 0\.38\b", check=_playground_counts),
    # (the anchor-slider fixture, tests/fixtures/book/live_anchor_slider.ipynb, passed here in one
    # worktree and not in a fresh clone, where Run All never started it: it is driven in Voila only)
    # the live training view (book chapter 7): it trains in a thread; Stop ends the run
    LabWidget("tests/fixtures/book/training_view.ipynb", control=".yolov2-training-stop",
              output=".yolov2-training-status", until=r"stopped", check=_training_stopped),
]


def _mirror(src: Path, dest: Path, copies: set[Path]) -> None:
    """dest mirrors src: folders on the way to a path in `copies` are made, those paths copied, every
    other entry symlinked (hidden ones left out)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry in copies:
            shutil.copy2(entry, dest / entry.name)
        elif any(entry in c.parents for c in copies):
            _mirror(entry, dest / entry.name, copies)
        else:
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


def _lab_command(extra: str) -> list[str]:
    """The line `make lab` runs, with LAB_ARGS=extra (as tests/test_lab.py reads it)."""
    import shlex

    dry = subprocess.run(["make", "-n", "--no-print-directory", "lab", f"LAB_ARGS={extra}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    [line] = [ln for ln in dry.splitlines() if "-m jupyterlab" in ln]
    return shlex.split(line)


@dataclass(frozen=True)
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    tree: Path  # the served root: copies of LAB_WIDGETS' notebooks

    def api(self, path: str, method: str = "GET") -> object:
        import json
        import urllib.request

        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path_factory) -> Iterator[Lab]:
    """A JupyterLab server (`make lab`'s command) for each case (one shared by all left every case
    after the first with Run All never starting), on 127.0.0.1, a free port, a token."""
    import json
    import uuid

    pytest.importorskip("jupyterlab", reason="JupyterLab is installed by requirements.txt (make venv)")
    base = tmp_path_factory.mktemp("lab")
    tree, settings = base / "tree", base / "settings"
    _mirror(ROOT, tree, {ROOT / c.notebook for c in LAB_WIDGETS})
    for name, values in LAB_SETTINGS.items():  # <user_settings_dir>/@scope/plugin/file
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port, token = _free_port(), uuid.uuid4().hex
    cmd = _lab_command(f"--no-browser --ServerApp.port={port} --ServerApp.port_retries=0 "
                       f"--IdentityProvider.token={token} --LabApp.news_url= "
                       f"--LabApp.workspaces_dir={base / 'workspaces'} --LabApp.user_settings_dir={settings}")
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.root_dir=book" in cmd, cmd
    cmd = [a for a in cmd if not a.startswith("--ServerApp.root_dir=")] + [f"--ServerApp.root_dir={tree}"]
    log = ROOT / "_build" / "browser" / "lab.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "YOLOV2_FAST": os.environ.get("YOLOV2_FAST", "1")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Lab(f"http://127.0.0.1:{port}", token, tree)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer on port {port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        _stop(proc, timeout=20)


# Run All queues every cell at once (each prompt shows `[*]:`); it has started when a prompt left
# `[ ]:` and ended when none shows `[*]:` (after an error JupyterLab clears the queue to `[ ]:`).
RUN_STARTED = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .some(p => p.textContent.trim() !== '[ ]:')"""
RUN_ENDED = """() => ![...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
    .some(p => p.textContent.trim() === '[*]:')"""


def _run_all(page, attempts: int = 4) -> None:
    """Run > Run All Cells, until a cell has started. The menu's command sometimes queues nothing (seen
    in fresh clones, on either case): each try waits 20 s for a prompt to leave `[ ]:` (a queued cell
    shows `[*]:` at once), and only a try that queued nothing is repeated."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(attempts):
        page.click(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")  # the notebook is current
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item[data-command='runmenu:run-all']:not(.lm-mod-disabled)")
        try:
            page.wait_for_function(RUN_STARTED, timeout=20_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close the menu if it is still open
    raise AssertionError(f"Run > Run All Cells started no cell in {attempts} tries")


def _act(page, control, keys: tuple[str, ...]) -> None:
    tag = control.evaluate("e => e.tagName")
    if tag == "SELECT":
        options = control.evaluate("e => [...e.options].map(o => o.value)")
        current = control.evaluate("e => e.value")
        control.select_option(options[(options.index(current) + 1) % len(options)])
    elif tag == "BUTTON":
        control.click()
    else:
        control.focus()
        for key in keys:
            page.keyboard.press(key)


@pytest.mark.parametrize("case", LAB_WIDGETS, ids=lambda c: Path(c.notebook).stem)
def test_widget_live_in_lab(browser, lab: Lab, case: LabWidget) -> None:
    """The notebook (a copy) in real JupyterLab: Run > Run All Cells, every cell runs without error
    (read back from the saved copy), the widget renders, the control moves and the kernel's answer
    changes the output; no JavaScript error, no request but to the server."""
    from yolov2.book.playground import COUNT_CLASS

    assert COUNT_CLASS == PLAYGROUND_COUNT_CLASS
    stem = Path(case.notebook).stem
    copy = lab.tree / case.notebook
    local = lab.url.split("//", 1)[1]  # 127.0.0.1:PORT, for http:// and ws://
    url = f"{lab.url}/lab/workspaces/{stem}/tree/{case.notebook}?token={lab.token}"
    try:
        with open_page(browser, url, lambda u: u.startswith(LOCAL_SCHEMES) or u.split("//", 1)[-1]
                       .startswith(local)) as (page, tr):
            page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=TIMEOUT_MS)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=TIMEOUT_MS)  # the kernel started
            _run_all(page)
            page.wait_for_function(RUN_ENDED, timeout=LAB_RUN_TIMEOUT_MS)
            control = page.wait_for_selector(case.control, timeout=TIMEOUT_MS)
            page.wait_for_function("sel => (document.querySelector(sel)?.innerText ?? '').trim() !== ''",
                                   arg=case.output, timeout=TIMEOUT_MS)
            before = _text(page, case.output)
            _act(page, control, case.keys)
            if case.until:
                page.wait_for_function("([sel, re]) => new RegExp(re).test("
                                       "document.querySelector(sel)?.innerText ?? '')",
                                       arg=[case.output, case.until], timeout=TIMEOUT_MS)
            else:
                page.wait_for_function("([sel, old]) => (document.querySelector(sel)?.innerText ?? '')"
                                       " !== old", arg=[case.output, before], timeout=TIMEOUT_MS)
            after = _text(page, case.output)
            mtime = copy.stat().st_mtime_ns
            page.click(".jp-NotebookPanel .jp-Notebook")  # focus the notebook for the shortcut
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while copy.stat().st_mtime_ns == mtime and time.monotonic() < deadline:
                time.sleep(0.2)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"lab-{stem}.png"), full_page=True)
    finally:
        for session in lab.api("/api/sessions") or []:
            lab.api(f"/api/sessions/{session['id']}", "DELETE")
    assert tr.blocked == [], f"JupyterLab page requested non-local resources: {tr.blocked}"
    assert tr.errors == [], f"JavaScript errors in JupyterLab: {tr.errors}"
    assert copy.stat().st_mtime_ns != mtime, "Control+S did not save the notebook"
    saved = nbformat.read(copy, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "not every cell ran"
    errors = [o.get("ename") for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == [], f"{case.notebook}: cells raised {errors}"
    if case.check:
        case.check(before, after)
