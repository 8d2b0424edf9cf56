"""Fixtures for the book tests: one build of the website, one headless browser, one local server.

The build (``jupyter-book build . --all -W -n --keep-going``) runs once per session, the first
time a test asks for ``built_site``; every page is then opened once in Chromium, driven by
Playwright, with every host but the local server blocked, and what the browser saw (requests,
console, typeset maths, widgets, images, and the text a reader reads) is collected in
``page_reports`` for the tests to check. ``live_code_report`` presses one page's "Live Code"
button the same way.

Environment variables:

``BOOK_TOC``
    Build with this table of contents instead of ``_toc.yml`` (relative to the repository root);
    only the pages it lists are built and opened.
``BOOK_REUSE_BUILD=1``
    Skip the build and test the site already in ``_build/html`` (for iterating on these tests).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = ROOT / "_build"
HTML_DIR = BUILD_DIR / "html"
SCREENSHOT_DIR = BUILD_DIR / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
BUILD_TIMEOUT_S = 20 * 60
# Widgets and MathJax render after the load event; give them this long (ms) to appear.
RENDER_TIMEOUT_MS = 20_000


def toc_path() -> Path:
    return ROOT / os.environ.get("BOOK_TOC", "_toc.yml")


def toc_documents(path: Path | None = None) -> list[str]:
    """Document names (``intro``, ``chapters/08_gpu``...) of a jb-book ``_toc.yml``, in order."""
    toc = yaml.safe_load((path or toc_path()).read_text())
    documents = [toc["root"]]
    for part in toc.get("parts", []):
        documents.extend(entry["file"] for entry in part.get("chapters", []))
    documents.extend(entry["file"] for entry in toc.get("chapters", []))
    return [str(Path(doc).with_suffix("")) for doc in documents]


@pytest.fixture(scope="session")
def built_site() -> Path:
    """Build the book once into ``_build/html``; fail with the build log on any error."""
    if os.environ.get("BOOK_REUSE_BUILD") == "1":
        if not (HTML_DIR / "index.html").is_file():
            pytest.fail("BOOK_REUSE_BUILD=1 but _build/html has no built site", False)
        return HTML_DIR
    fetch = subprocess.run(
        [sys.executable, str(ROOT / "book" / "fetch_assets.py")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if fetch.returncode != 0:
        pytest.fail(f"book/fetch_assets.py failed:\n{fetch.stdout}\n{fetch.stderr}", False)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", ".", "--all", "-W", "-n", "--keep-going"]
    if "BOOK_TOC" in os.environ:
        command += ["--toc", os.environ["BOOK_TOC"]]
    start = time.perf_counter()
    result = subprocess.run(  # no progress bars, as `make book` builds it
        command, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    elapsed = time.perf_counter() - start
    log = result.stdout + result.stderr
    (BUILD_DIR / "book-build.log").parent.mkdir(parents=True, exist_ok=True)
    (BUILD_DIR / "book-build.log").write_text(log)
    print(f"\nbook build: {elapsed:.1f} s, exit {result.returncode}")
    if result.returncode != 0:
        pytest.fail(f"jupyter-book build failed (exit {result.returncode}) after {elapsed:.0f} s; "
                    f"full log in _build/book-build.log. Last lines:\n{log[-6000:]}", False)
    return HTML_DIR


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@pytest.fixture(scope="session")
def site_url(built_site: Path):
    """Serve the built site from 127.0.0.1 on a free port; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@dataclass
class PageReport:
    """What the browser saw on one page."""

    document: str
    console_errors: list[str] = field(default_factory=list)
    failed_local_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    local_responses: list[tuple[int, str]] = field(default_factory=list)  # (status, path)
    has_math: bool = False
    mathjax_containers: int = 0
    math_errors: list[str] = field(default_factory=list)  # formulas MathJax could not parse
    has_widgets: bool = False
    rendered_widgets: int = 0
    images: list[tuple[str, int]] = field(default_factory=list)  # (src, naturalWidth)
    text_blocks: list[str] = field(default_factory=list)  # what a reader reads, block by block
    output_tables: int = 0  # <table>s in the outputs of code cells
    live_cells: int = 0  # code cells that Thebe turned into editors (live_code_report only)
    code_cells: int = 0


# The text of each block of the page's main column (paragraphs, list items, table cells,
# headings), leaving out code, outputs printed as text, API signatures and maths typeset by
# MathJax: the prose and rendered outputs a reader reads, where no Markdown should be left.
_TEXT_BLOCKS_JS = """() => {
    const skipped = "pre, code, script, style, textarea, mjx-container, .sig";
    const blocks = document.querySelectorAll(
        "main :is(p, li, dt, dd, td, th, h1, h2, h3, h4, h5, h6, caption, figcaption)");
    return Array.from(blocks, (block) => {
        const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT);
        let text = "";
        while (walker.nextNode()) {
            if (!walker.currentNode.parentElement.closest(skipped)) {
                text += walker.currentNode.textContent;
            }
        }
        return text;
    }).filter((text) => text.trim() !== "");
}"""


def _launch_chromium(playwright):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}; the browser tests need it. "
            "Install it with: apt-get update && apt-get install -y chromium",
            False,
        )
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


def _open_watched(context, report: PageReport):
    """A new page that blocks every host but the local server and records what happens."""
    page = context.new_page()

    def route(route_obj):
        parts = urlsplit(route_obj.request.url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            report.external_requests.append(route_obj.request.url)
            route_obj.abort()
        else:
            route_obj.continue_()

    def on_response(response):
        parts = urlsplit(response.url)
        if parts.hostname in LOCAL_HOSTS:
            report.local_responses.append((response.status, parts.path))
            if response.status >= 400:
                report.failed_local_requests.append(f"{response.status} {response.url}")

    def on_request_failed(request):
        if urlsplit(request.url).hostname in LOCAL_HOSTS:
            report.failed_local_requests.append(f"{request.failure} {request.url}")

    def on_console(message):
        if message.type == "error":
            report.console_errors.append(message.text)

    page.route("**/*", route)
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    page.on("console", on_console)
    page.on("pageerror", lambda error: report.console_errors.append(f"page error: {error}"))
    return page


def _visit(context, url: str, document: str) -> PageReport:
    report = PageReport(document)
    page = _open_watched(context, report)
    page.goto(url, wait_until="load")
    html = page.content()
    report.has_math = page.locator(".math").count() > 0
    if report.has_math:
        report.mathjax_containers = page.evaluate(
            """async () => {
                if (!window.MathJax || !MathJax.startup) { return 0; }
                await MathJax.startup.promise;
                return document.querySelectorAll('mjx-container').length;
            }"""
        )
        report.math_errors = page.evaluate(
            """() => Array.from(document.querySelectorAll('mjx-merror'),
                (error) => error.getAttribute('data-mjx-error') || error.textContent)"""
        )
    report.has_widgets = "application/vnd.jupyter.widget-view+json" in html
    if report.has_widgets:
        try:
            page.wait_for_selector(".jupyter-widgets, .widget-inline-hbox",
                                   timeout=RENDER_TIMEOUT_MS)
        except Exception:  # noqa: BLE001 - a timeout is reported as zero widgets below
            pass
        report.rendered_widgets = page.locator(".jupyter-widgets").count()
    page.wait_for_load_state("networkidle")
    report.images = page.evaluate(
        "() => Array.from(document.images).map(img => [img.currentSrc || img.src,"
        " img.complete ? img.naturalWidth : 0])"
    )
    report.text_blocks = page.evaluate(_TEXT_BLOCKS_JS)
    report.output_tables = page.locator("main .cell_output table").count()
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / (document.replace("/", "__") + ".png")))
    page.close()
    return report


@pytest.fixture(scope="session")
def page_reports(site_url: str) -> dict[str, PageReport]:
    """Open every page of the table of contents once in headless Chromium; one report each."""
    from playwright.sync_api import sync_playwright

    reports = {}
    with sync_playwright() as playwright:
        browser = _launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            for document in toc_documents():
                reports[document] = _visit(context, f"{site_url}{document}.html", document)
        finally:
            context.close()
            browser.close()
    return reports


def live_code_document() -> str:
    """The first page of the table of contents that has code cells (and so a Live Code button)."""
    for document in toc_documents():
        source = ROOT / f"{document}.md"
        if source.is_file() and "```{code-cell}" in source.read_text(encoding="utf-8"):
            return document
    pytest.fail("no page of the table of contents has code cells", False)


@pytest.fixture(scope="session")
def live_code_report(site_url: str) -> PageReport:
    """Press "Live Code" on one page, with every other host blocked, and report what happened.

    Thebe turns the code cells into editors and asks Binder for a kernel; the request to Binder
    is blocked here (it is the one host a live session must reach), so no kernel starts.
    """
    from playwright.sync_api import sync_playwright

    document = live_code_document()
    report = PageReport(document)
    with sync_playwright() as playwright:
        browser = _launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = _open_watched(context, report)
            page.goto(f"{site_url}{document}.html", wait_until="load")
            report.code_cells = page.locator("main .cell .cell_input").count()
            # The button of the launch menu; sphinx-thebe's script (async) must be there first.
            page.wait_for_function("typeof initThebe === 'function'", timeout=RENDER_TIMEOUT_MS)
            page.locator("button.btn-launch-thebe").dispatch_event("click")
            try:
                page.wait_for_selector(".thebe-cell", timeout=RENDER_TIMEOUT_MS)
            except Exception:  # noqa: BLE001 - a timeout is reported as zero live cells below
                pass
            page.wait_for_load_state("networkidle")
            report.live_cells = page.locator(".thebe-cell .CodeMirror").count()
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT_DIR / "live_code.png"))
        finally:
            context.close()
            browser.close()
    return report


def binder_host() -> str:
    """The host of the Binder service that _config.yml's launch buttons use."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return urlsplit(config["launch_buttons"]["binderhub_url"]).hostname


def computed_markdown_tables(document: str) -> int:
    """How many pipe tables the code cells of ``document`` display as Markdown outputs.

    Read from the notebook as the build executed it (matched in its Jupyter cache); outputs of
    glue calls and of cells whose output is removed are not shown in place, so they do not count.
    """
    import jupytext
    from jupyter_cache import get_cache

    source = jupytext.read(ROOT / f"{document}.md")
    if "kernelspec" not in source.metadata:
        return 0  # a plain page, not a notebook (the landing page, the glossary)
    cache = get_cache(BUILD_DIR / ".jupyter_cache")
    executed = cache.get_cache_bundle(cache.match_cache_notebook(source).pk).nb
    count = 0
    for cell in executed.cells:
        if {"remove-output", "remove-cell"} & set(cell.get("metadata", {}).get("tags", [])):
            continue
        for output in cell.get("outputs", []):
            markdown = output.get("data", {}).get("text/markdown", "")
            if "scrapbook" not in output.get("metadata", {}) and _TABLE_RULE.search(markdown):
                count += 1
    return count


# The rule under a pipe table's header: |---|:--:|...
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*\|", re.MULTILINE)
