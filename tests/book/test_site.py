"""The built website: every page loads in headless Chromium with nothing from third-party hosts,
and shows what its sources meant (tables as tables, maths typeset, no Markdown left as text).

These tests build the book once (see conftest.py) and open every page of ``_toc.yml``.
Screenshots of each page land in ``_build/screenshots/``.
"""

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from .conftest import (
    HTML_DIR,
    LOCAL_HOSTS,
    binder_host,
    computed_markdown_tables,
    toc_documents,
)
from .markdown_leaks import markdown_leaks

pytestmark = pytest.mark.slow

DOCUMENTS = toc_documents()
# Chapters whose pages must show a rendered ipywidget (BOOK.md): the widget state saved at
# execution time has to survive into the static page.
WIDGET_CHAPTERS = ["chapters/01_minibatches", "chapters/03_bn_algorithm",
                   "chapters/05_inference", "chapters/08_gpu"]


def test_build_writes_every_page(built_site):
    missing = [doc for doc in DOCUMENTS if not (built_site / f"{doc}.html").is_file()]
    assert not missing, f"pages missing from {HTML_DIR}: {missing}"


# What the site serves itself (book/fetch_assets.py): none of it may come from a CDN.
SELF_HOSTED_ASSETS = ("mathjax/es5/tex-mml-chtml.js", "requirejs/require.js",
                      "html-manager/dist/embed-amd.js", "thebe/lib/index.js", "mathjax2-hub.js")


class _LoadedURLs(HTMLParser):
    """The URLs a page makes the browser load: scripts, stylesheets, images, frames, and the
    URLs written into inline scripts (such as Thebe's THEBE_JS_URL)."""

    LOADING = {("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"),
               ("source", "src"), ("video", "src"), ("audio", "src")}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        # <link rel="canonical"> and the like name a page, they load nothing.
        if tag == "link" and not {"stylesheet", "preload", "modulepreload", "icon"} & set(
                (attributes.get("rel") or "").split()):
            return
        self.urls += [value for name, value in attrs if (tag, name) in self.LOADING and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.urls += re.findall(r"""https?://[^\s"'`)]+""", data)


def third_party_urls(html: str) -> list[str]:
    parser = _LoadedURLs()
    parser.feed(html)
    return [url for url in parser.urls
            if urlsplit(url).scheme in ("http", "https")
            and urlsplit(url).hostname not in LOCAL_HOSTS]


def test_loaded_urls_are_found_in_tags_and_inline_scripts():
    html = ('<link rel="stylesheet" href="https://cdn.example/a.css">'
            '<link rel="canonical" href="https://book.example/page.html">'
            '<script src="../_static/local.js"></script>'
            '<script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"</script>'
            '<a href="https://mybinder.org/v2/gh/x/y">launch</a>')
    assert third_party_urls(html) == ["https://cdn.example/a.css",
                                      "https://unpkg.com/thebe@0.8.2/lib/index.js"]


def test_site_ships_its_own_javascript(built_site):
    """MathJax, RequireJS, the widget manager and Thebe are served from _static; no page makes
    the browser load anything from another host (links to other sites are fine)."""
    static = built_site / "_static"
    for asset in SELF_HOSTED_ASSETS:
        assert (static / asset).is_file(), f"_static/{asset} was not copied into the site"
    loading_elsewhere = {}
    for page in built_site.rglob("*.html"):
        urls = third_party_urls(page.read_text(encoding="utf-8"))
        if urls:
            loading_elsewhere[str(page.relative_to(built_site))] = urls
    assert loading_elsewhere == {}, f"pages that load from other hosts: {loading_elsewhere}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_requests_no_third_party_host(page_reports, document):
    assert page_reports[document].external_requests == [], (
        f"{document} tried to load from other hosts (blocked): "
        f"{page_reports[document].external_requests}"
    )


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_has_no_console_errors(page_reports, document):
    assert page_reports[document].console_errors == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_has_no_failed_local_requests(page_reports, document):
    assert page_reports[document].failed_local_requests == []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_maths_is_typeset(page_reports, document):
    report = page_reports[document]
    if report.has_math:
        assert report.mathjax_containers > 0, f"{document} has maths but MathJax rendered none"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_maths_has_no_errors(page_reports, document):
    assert page_reports[document].math_errors == [], (
        f"{document}: MathJax could not typeset {page_reports[document].math_errors}"
    )


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_images_load(page_reports, document):
    broken = [src for src, width in page_reports[document].images if width <= 0]
    assert broken == [], f"{document}: images that did not load: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_widgets_render(page_reports, document):
    report = page_reports[document]
    if document in WIDGET_CHAPTERS:
        assert report.has_widgets, f"{document} should embed saved ipywidgets state"
    if report.has_widgets:
        assert report.rendered_widgets > 0, f"{document}: widget state present, none rendered"


def test_chapters_have_maths(page_reports):
    """The pages that are mostly formulas really did typeset some."""
    typeset = {doc for doc, report in page_reports.items() if report.mathjax_containers > 0}
    for doc in ("chapters/08_gpu", "chapters/glossary"):
        if doc in page_reports:
            assert doc in typeset


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_shows_no_markdown_as_text(page_reports, document):
    """No paragraph, list item, table cell or heading shows Markdown or MyST syntax as text:
    pipe tables, $$, **, {cite}, {glue:text}, ::: and the like."""
    leaks = {block[:120]: found for block in page_reports[document].text_blocks
             if (found := markdown_leaks(block))}
    assert leaks == {}, f"{document} shows Markdown as text: {leaks}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_page_shows_no_frozen_progress_bar(built_site, document):
    """Progress bars are for live runs; the book is built with TQDM_DISABLE=1, so no page
    keeps a bar stopped where the build left it (tqdm's readout ends in "it/s]")."""
    page = (built_site / f"{document}.html").read_text()
    assert "it/s]" not in page and "s/it]" not in page


@pytest.mark.parametrize("document", DOCUMENTS)
def test_computed_tables_render_as_tables(built_site, page_reports, document):
    """Every pipe table a code cell displays as Markdown is an HTML table on the page."""
    expected = computed_markdown_tables(document)
    assert page_reports[document].output_tables >= expected, (
        f"{document}: its code cells display {expected} Markdown tables, the page shows "
        f"{page_reports[document].output_tables} as tables"
    )


def test_live_code_runs_thebe_from_the_site(live_code_report):
    """"Live Code" loads Thebe from _static and turns every code cell into an editor; the only
    other host it contacts is Binder, for the kernel."""
    report = live_code_report
    thebe = [status for status, path in report.local_responses
             if path.endswith("/_static/thebe/lib/index.js")]
    assert thebe == [200], f"Thebe's script was not served by the site: {thebe}"
    assert report.code_cells > 0
    assert report.live_cells == report.code_cells, (
        f"{report.document}: Thebe made {report.live_cells} of {report.code_cells} cells live"
    )
    assert report.failed_local_requests == []
    other_hosts = {urlsplit(url).hostname for url in report.external_requests} - {binder_host()}
    assert other_hosts == set(), f"Live Code loaded from {other_hosts}"
    # With Binder blocked the kernel cannot start; any other console error is a fault.
    unexpected = [error for error in report.console_errors
                  if binder_host() not in error and "net::ERR_FAILED" not in error]
    assert unexpected == []
