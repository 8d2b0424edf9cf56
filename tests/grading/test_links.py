"""Released notebooks link the published book, so the links work from a download or on Colab."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from bnlib.grading import ASSIGNMENTS
from bnlib.grading.links import absolute_chapter_links, book_address

REPO = Path(__file__).resolve().parents[2]
ADDRESS = book_address()
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_address_is_the_books_baseurl_with_one_trailing_slash():
    assert ADDRESS.startswith("https://") and ADDRESS.endswith("/")
    assert not ADDRESS.endswith("//")
    assert ADDRESS.rstrip("/") in (REPO / "_config.yml").read_text()


@pytest.mark.parametrize(("relative", "absolute"), [
    ("[ch. 4](../../chapters/04_backprop.md)", "[ch. 4](https://x.org/b/chapters/04_backprop.html)"),
    ("[ch. 3](../chapters/03_bn_algorithm.ipynb#the-forward-pass)",
     "[ch. 3](https://x.org/b/chapters/03_bn_algorithm.html#the-forward-pass)"),
    ("[torch](https://pytorch.org/docs) and [data](data.csv)",
     "[torch](https://pytorch.org/docs) and [data](data.csv)"),
])
def test_relative_chapter_links_become_absolute_and_nothing_else_changes(relative, absolute):
    assert absolute_chapter_links(relative, "https://x.org/b/") == absolute


def test_a_config_without_an_https_baseurl_is_refused(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("title: a book\nhtml:\n  use_repository_button: true\n")
    with pytest.raises(ValueError, match=r"must set html.baseurl to the published book's "
                                         r"https:// address, not None"):
        book_address(config)
    with pytest.raises(FileNotFoundError, match="the book's address"):
        book_address(tmp_path / "missing.yml")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_release_links_its_chapters_on_the_published_book(assignment):
    notebook = nbformat.read(str(REPO / "exercises" / assignment / f"{assignment}.ipynb"), 4)
    targets = [target for cell in notebook.cells if cell.cell_type == "markdown"
               for target in MARKDOWN_LINK.findall(cell.source)]
    chapters = [t for t in targets if "chapters/" in t]
    assert chapters, f"{assignment} links no chapter"
    for target in chapters:
        assert target.startswith(ADDRESS + "chapters/"), target
        page = target.removeprefix(ADDRESS).split("#")[0].removesuffix(".html")
        assert (REPO / f"{page}.md").is_file(), f"{target} names no chapter of the book"
