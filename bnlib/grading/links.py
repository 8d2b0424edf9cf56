"""Links from a released notebook to the book, made absolute so they work wherever it is opened.

A solution notebook links its chapter as the repository lays it out,
``[chapter 4](../../chapters/04_backprop.md)``. A student opens the released copy after
downloading it from the site, on Colab or on Binder, where that relative path leads nowhere,
so ``nbgrader generate_assignment`` rewrites each such link to the published page,
``https://.../chapters/04_backprop.html``. The address is the book's ``html.baseurl`` in
``_config.yml``, the one place it is set.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from nbgrader.preprocessors import NbGraderPreprocessor

BOOK_CONFIG = Path(__file__).resolve().parents[2] / "_config.yml"

# ](../../chapters/04_backprop.md#anchor): any depth of ../, a .md or .ipynb page, an anchor.
CHAPTER_LINK = re.compile(
    r"\]\((?:\.\./)+chapters/(?P<page>[\w-]+)\.(?:md|ipynb)(?P<anchor>#[\w-]+)?\)")


def book_address(config: Path = BOOK_CONFIG) -> str:
    """The published book's address, ending in ``/``, from ``html.baseurl`` in ``config``."""
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: the book's address (html.baseurl) is "
                                "read from the repository's _config.yml")
    address = (yaml.safe_load(config.read_text()).get("html") or {}).get("baseurl")
    if not address or not address.startswith("https://"):
        raise ValueError(f"{config} must set html.baseurl to the published book's https:// "
                         f"address, not {address!r}")
    return address.rstrip("/") + "/"


def absolute_chapter_links(markdown: str, address: str) -> str:
    """``markdown`` with every relative link to a chapter pointing at its published page."""
    return CHAPTER_LINK.sub(
        lambda link: f"]({address}chapters/{link['page']}.html{link['anchor'] or ''})", markdown)


class AbsoluteChapterLinks(NbGraderPreprocessor):
    """nbgrader step of ``generate_assignment``: chapter links point at the published book."""

    def preprocess(self, nb, resources):
        address = book_address()
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = absolute_chapter_links(cell.source, address)
        return nb, resources
