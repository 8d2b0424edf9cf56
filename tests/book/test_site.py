"""The built website: every page loads in headless Chromium with nothing from third-party hosts.

These tests build the book once (see conftest.py) and open every page of ``_toc.yml``.
Screenshots of each page land in ``_build/screenshots/``.
"""

import pytest

from .conftest import HTML_DIR, toc_documents

pytestmark = pytest.mark.slow

DOCUMENTS = toc_documents()
# Chapters whose pages must show a rendered ipywidget (BOOK.md): the widget state saved at
# execution time has to survive into the static page.
WIDGET_CHAPTERS = ["chapters/01_minibatches", "chapters/03_bn_algorithm",
                   "chapters/05_inference", "chapters/08_gpu"]


def test_build_writes_every_page(built_site):
    missing = [doc for doc in DOCUMENTS if not (built_site / f"{doc}.html").is_file()]
    assert not missing, f"pages missing from {HTML_DIR}: {missing}"


def test_site_ships_its_own_javascript(built_site):
    """MathJax, RequireJS and the widget manager are served from _static, not from a CDN."""
    static = built_site / "_static"
    for asset in ("mathjax/es5/tex-mml-chtml.js", "requirejs/require.js",
                  "html-manager/dist/embed-amd.js"):
        assert (static / asset).is_file(), f"_static/{asset} was not copied into the site"
    for page in built_site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for cdn in ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com/@jupyter-widgets",
                    "fonts.googleapis.com"):
            assert f'src="https://{cdn}' not in text and f'href="https://{cdn}' not in text, (
                f"{page.relative_to(built_site)} loads {cdn}"
            )


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
