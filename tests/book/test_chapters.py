"""Fast checks of the book's sources (no build): every chapter follows the book's conventions.

Each chapter is a MyST-Markdown notebook with a jupytext header, a ``(label)=`` target and a
numbered title, learning objectives, a summary, check-your-understanding questions with
answers, and (for some chapters) a link to its exercise. Cross-references, glossary terms and
citations must resolve, or the ``-W -n`` build fails much later.
"""

import re
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, toc_documents

# name -> (label, number, exercise or None), as the book's plan fixes them.
CHAPTERS = {
    "01_minibatches": ("ch-minibatches", 1, None),
    "02_covariate_shift": ("ch-covariate-shift", 2, None),
    "03_bn_algorithm": ("ch-bn-algorithm", 3, "bn_forward"),
    "04_backprop": ("ch-backprop", 4, "bn_backward"),
    "05_inference": ("ch-inference", 5, "bn_inference"),
    "06_layer_norm": ("ch-layer-norm", 6, "layer_norm"),
    "07_why_bn_works": ("ch-why-bn", 7, None),
    "08_gpu": ("ch-gpu", 8, "bn_torch"),
    "09_myths": ("ch-myths", 9, None),
}
REFERENCE_PAGES = {"glossary": "glossary", "bibliography": "bibliography", "api": "api"}
BOOK_FILES = [ROOT / "intro.md"] + [ROOT / "chapters" / f"{name}.md"
                                    for name in list(CHAPTERS) + list(REFERENCE_PAGES)]

FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
LABEL_TARGET = re.compile(r"^\(([\w-]+)\)=\s*$", re.MULTILINE)
ROLE = r"\{%s\}`([^`]+)`"
HEADING = re.compile(r"^#{1,6} +(.*)$", re.MULTILINE)


def chapter_text(name: str) -> str:
    path = ROOT / "chapters" / f"{name}.md"
    if not path.is_file():
        pytest.fail(f"chapters/{name}.md does not exist yet")
    return path.read_text(encoding="utf-8")


def role_targets(text: str, role: str) -> list[str]:
    """Targets of a MyST role; ``text <target>`` forms give the target."""
    targets = []
    for content in re.findall(ROLE % role, text):
        explicit = re.search(r"<([^>]+)>\s*$", content)
        targets.append((explicit.group(1) if explicit else content).strip())
    return targets


def existing_book_texts() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in BOOK_FILES if path.is_file()}


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_jupytext_header(name):
    match = FRONT_MATTER.match(chapter_text(name))
    assert match, f"chapters/{name}.md must start with a YAML front matter block"
    header = yaml.safe_load(match.group(1))
    assert header["jupytext"]["text_representation"]["format_name"] == "myst"
    assert header["jupytext"]["text_representation"]["extension"] == ".md"
    assert header["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_label_and_numbered_title(name):
    label, number, _ = CHAPTERS[name]
    text = FRONT_MATTER.sub("", chapter_text(name)).lstrip()
    assert re.match(rf"\({re.escape(label)}\)=\s*\n+# {number}\. \S", text), (
        f"chapters/{name}.md must open with ({label})= then '# {number}. Title'"
    )


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_learning_objectives(name):
    text = chapter_text(name)
    assert re.search(r"^(```|:::)\{admonition\} Learning objectives", text, re.MULTILINE), (
        f"chapters/{name}.md needs a 'Learning objectives' admonition"
    )


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_summary(name):
    headings = HEADING.findall(chapter_text(name))
    assert any(h.strip().lower().endswith("summary") for h in headings)


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_checks_understanding_with_answers(name):
    text = chapter_text(name)
    match = re.search(r"^#{1,6} +Check your understanding\s*$", text, re.MULTILINE)
    assert match, f"chapters/{name}.md needs a 'Check your understanding' section"
    after = text[match.end():]
    answers = len(re.findall(r":class: dropdown|hide-input|hide-output|toggle", after))
    assert answers >= 1, f"chapters/{name}.md: questions need answers in toggles"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_links_its_exercise(name):
    exercise = CHAPTERS[name][2]
    links = role_targets(chapter_text(name), "download")
    expected = f"../exercises/{exercise}/{exercise}.ipynb"
    if exercise is None:
        assert not any("exercises/" in link for link in links)
    else:
        assert expected in links, f"chapters/{name}.md must link {expected} with {{download}}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_keeps_no_private_copy_of_bnlib(name):
    import bnlib.numpy

    defined = set(re.findall(r"^def (\w+)\(", chapter_text(name), re.MULTILINE))
    copies = defined & set(bnlib.numpy.__all__)
    assert not copies, f"chapters/{name}.md re-implements bnlib.numpy: {sorted(copies)}"


def test_toc_lists_every_chapter_in_order():
    documents = toc_documents(ROOT / "_toc.yml")
    expected = (["intro"] + [f"chapters/{name}" for name in CHAPTERS]
                + [f"chapters/{name}" for name in REFERENCE_PAGES])
    assert documents == expected
    on_disk = {f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("*.md")}
    unlisted = on_disk - set(documents)
    assert not unlisted, f"chapter files missing from _toc.yml: {sorted(unlisted)}"


def test_toc_entries_exist():
    missing = [doc for doc in toc_documents(ROOT / "_toc.yml")
               if not (ROOT / f"{doc}.md").is_file()]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_cross_references_resolve():
    texts = existing_book_texts()
    labels = {label for text in texts.values() for label in LABEL_TARGET.findall(text)}
    labels |= {label for label, _, _ in CHAPTERS.values()}  # chapters being written elsewhere
    broken = {f"{path.name}: {target}" for path, text in texts.items()
              for target in role_targets(text, "ref") if target not in labels}
    assert not broken, f"{{ref}} targets that no page defines: {sorted(broken)}"


def test_glossary_has_the_core_terms():
    glossary = (ROOT / "chapters" / "glossary.md").read_text(encoding="utf-8")
    body = glossary.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    terms = {line.strip().lower() for line in body.splitlines()
             if line.strip() and not line.startswith((" ", "\t"))}
    assert len(terms) >= 25
    for term in ("batch normalization", "internal covariate shift", "running statistics",
                 "bessel's correction", "layer normalization", "rmsnorm", "roofline",
                 "welford's algorithm", "syncbatchnorm", "ghost batch norm",
                 "batch renormalization", "folding", "channels_last"):
        assert term in terms, f"glossary lacks {term!r}"


def test_glossary_terms_used_are_defined():
    glossary = (ROOT / "chapters" / "glossary.md").read_text(encoding="utf-8")
    body = glossary.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    defined = {line.strip().lower() for line in body.splitlines()
               if line.strip() and not line.startswith((" ", "\t"))}
    undefined = {f"{path.name}: {term}" for path, text in existing_book_texts().items()
                 for term in role_targets(text, "term") if term.lower() not in defined}
    assert not undefined, f"{{term}}s missing from the glossary: {sorted(undefined)}"


def test_citations_are_in_references_bib():
    keys = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(),
                          re.MULTILINE))
    cited = {f"{path.name}: {key.strip()}" for path, text in existing_book_texts().items()
             for content in re.findall(ROLE % "cite(?::[pt])?", text)
             for key in content.split(",") if key.strip() not in keys}
    assert not cited, f"citation keys missing from references.bib: {sorted(cited)}"
