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
    "01_minibatches": ("ch-minibatches", 1, "batch_statistics"),
    "02_covariate_shift": ("ch-covariate-shift", 2, "saturation"),
    "03_bn_algorithm": ("ch-bn-algorithm", 3, "bn_forward"),
    "04_backprop": ("ch-backprop", 4, "bn_backward"),
    "05_inference": ("ch-inference", 5, "bn_inference"),
    "06_layer_norm": ("ch-layer-norm", 6, "layer_norm"),
    "07_why_bn_works": ("ch-why-bn", 7, "scale_invariance"),
    "08_gpu": ("ch-gpu", 8, "bn_torch"),
    "09_myths": ("ch-myths", 9, "bn_pitfalls"),
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


def test_every_declared_assignment_is_linked_from_its_chapter():
    from bnlib.grading.assignments import declared

    chapters = {number: name for name, (_, number, _) in CHAPTERS.items()}
    for assignment in declared():
        name = chapters[assignment.chapter]
        expected = f"../exercises/{assignment.name}/{assignment.name}.ipynb"
        assert expected in role_targets(chapter_text(name), "download"), (
            f"chapters/{name}.md must link {expected} with {{download}}")


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


# --- wording and notation (the book's conventions) --------------------------------------------

CHAPTER_SOURCES = sorted((ROOT / "chapters").glob("*.md"))
# Pages whose maths follows the notation table of intro.md (chapters join as they convert).
NOTATION_PAGES = [ROOT / "intro.md", ROOT / "chapters" / "glossary.md"] + [
    ROOT / "chapters" / f"{name}.md" for name in list(CHAPTERS)[:5]]
# Symbols the notation table retires: m (batch size, momentum, running mean), s (several
# things) and B (batch size, sequences, bandwidth; the mini-batch is calligraphic B).
RETIRED_SYMBOLS = re.compile(r"(?<![A-Za-z])[msB](?![A-Za-z])")
CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```", re.MULTILINE | re.DOTALL)
MATH = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.DOTALL)
# Commands whose braced argument is text or a font, not a symbol: \mathcal{B} is the mini-batch.
TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|operatorname|mathcal|mathbb|mathbf)\{[^{}]*\}")


def prose(path) -> str:
    """A page without its code cells: what is written as text and maths."""
    return CODE_CELL.sub("", path.read_text(encoding="utf-8"))


def retired_symbols(text: str) -> list[str]:
    """The maths formulas of ``text`` that use m, s or B as a symbol."""
    found = []
    for match in MATH.finditer(text):
        formula = match.group(1) or match.group(2)
        bare = re.sub(r"\\[A-Za-z]+", " ", TEXT_COMMAND.sub(" ", formula))
        if RETIRED_SYMBOLS.search(bare):
            found.append(formula.strip())
    return found


def test_retired_symbols_are_found_in_maths_only():
    assert retired_symbols(r"the mean $\mu_B$ over $m$ values, $\frac{1}{B}$") == [
        r"\mu_B", "m", r"\frac{1}{B}"]
    assert retired_symbols(r"over $\mathcal{B}$, $\sigma^2_\mathcal{B}$, $\text{mean}$, "
                           r"$\operatorname{sigmoid}(z)$, $\sum_i$ and a batch B of m") == []


@pytest.mark.parametrize("path", NOTATION_PAGES, ids=lambda path: path.name)
def test_maths_uses_the_notation_table(path):
    assert retired_symbols(prose(path)) == [], (
        f"{path.name} uses m, s or B as a symbol; see the notation table in intro.md"
    )


BRITISH_SPELLING = re.compile(
    r"\b(?:normalis|initialis|optimis|regularis|generalis|synchronis|standardis|minimis|"
    r"summaris|recognis)(?:ation|ed|es?|ing|er)\b|\bcentr(?:ed|ing|e)\b|\bbehaviour|\bcolour",
    re.IGNORECASE)


@pytest.mark.parametrize("path", [ROOT / "intro.md", *CHAPTER_SOURCES],
                         ids=lambda path: path.name)
def test_spelling_is_american(path):
    """normalize, initialization, centered, behavior: one spelling across the book."""
    lines = [f"{number}: {line.strip()}"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if BRITISH_SPELLING.search(line)]
    assert lines == [], f"{path.name} uses British spellings:\n" + "\n".join(lines)


# How the book was made is not the book's subject: sources are named for what they are.
MAKING_OF = re.compile(r"source texts?|seed claims?|seed texts?|the seed's|reference notes|"
                       r"texts? (?:this|the) course grew from", re.IGNORECASE)


@pytest.mark.parametrize("path", [ROOT / "intro.md", *CHAPTER_SOURCES],
                         ids=lambda path: path.name)
def test_no_sentence_speaks_of_how_the_book_was_made(path):
    found = MAKING_OF.findall(path.read_text(encoding="utf-8"))
    assert found == [], f"{path.name} speaks of how the book was made: {found}"


# --- the glossary points to the chapters that explain its terms ---------------------------------

# How a chapter may name a glossary term when not by the term itself.
TERM_ALIASES = {
    "gamma": [r"\gamma"], "beta": [r"\beta"], "epsilon": [r"\epsilon"],
    "affine transform": ["affine"], "vanishing gradient": ["vanishing"],
    "saturation": ["saturat"], "folding": ["fold"], "welford's algorithm": ["welford"],
    "fused kernel": ["fused"], "ridge point": ["ridge"],
    "train/eval discrepancy": ["train/eval", "train-test", "eval mode", "evaluation mode"],
    "zero-initialized gamma": [r"zero-initialized $\gamma$"],
}


def chapter_of_label() -> dict[str, str]:
    """Every label of a chapter, its own and its sections', -> the chapter's name."""
    return {label: name for name in CHAPTERS
            for label in LABEL_TARGET.findall(chapter_text(name))}


def glossary_entries() -> dict[str, str]:
    """Term -> definition text, from the {glossary} block of chapters/glossary.md."""
    body = (ROOT / "chapters" / "glossary.md").read_text(encoding="utf-8")
    body = body.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    entries, term = {}, None
    for line in body.splitlines():
        if line.strip() and not line.startswith((" ", "\t")):
            term = line.strip()
            entries[term] = ""
        elif term is not None:
            entries[term] += line.strip() + " "
    return entries


@pytest.mark.parametrize("term", list(glossary_entries()))
def test_glossary_entry_points_to_a_chapter_that_explains_it(term):
    definition = glossary_entries()[term]
    chapter_of = chapter_of_label()
    chapters = [chapter_of[label] for label in role_targets(definition, "ref")
                if label in chapter_of]
    if not chapters:
        assert role_targets(definition, "cite(?::[pt])?"), (
            f"glossary: {term!r} names no chapter and cites no source"
        )
        return
    names = [term.lower()] + [alias.lower() for alias in TERM_ALIASES.get(term.lower(), [])]
    # Whitespace folded, so that a term broken across two lines still counts.
    silent = [name for name in chapters
              if not any(alias in " ".join(chapter_text(name).lower().split())
                         for alias in names)]
    assert silent == [], f"glossary: {term!r} points to chapters that never mention it: {silent}"
