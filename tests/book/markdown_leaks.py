"""Markdown and MyST syntax that a reader should never see as text on a built page.

A page shows such syntax when a source was not parsed the way its author meant: a computed
table rendered as CommonMark (no tables), a role inside an output that is never parsed as MyST,
maths that MathJax did not typeset. :func:`markdown_leaks` finds them in the text of one block
of a page (a paragraph, a list item, a table cell), with code and typeset maths already left out.
"""

from __future__ import annotations

import re

# (name, pattern): each pattern matches syntax that rendering should have consumed.
LEAK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # A line "| a | b |", or a rule "|---|" (smart quotes turn --- into an em dash: "|—|").
    ("pipe table", re.compile(r"^\s*\|.*\|\s*$|\|\s*:?[-—–]+:?\s*\|", re.MULTILINE)),
    ("display maths delimiter $$", re.compile(r"\$\$")),
    ("inline maths $...$", re.compile(r"\$[^$\s][^$\n]*\$")),
    (r"untypeset maths \( or \[", re.compile(r"\\\(|\\\[")),
    # A TeX command outside typeset maths: a formula whose dollar signs were not paired.
    ("TeX command shown as text", re.compile(r"\\[A-Za-z]{2,}")),
    # "**word ... word**", so that Python's x**2 and **kwargs are not taken for bold.
    ("bold **...**", re.compile(r"\*\*[^*\s](?:[^*]*[^*\s])?\*\*")),
    ("MyST role such as {cite} or {glue:text}", re.compile(r"\{[a-z]+(?::[a-z]+)?\}")),
    ("MyST directive fence", re.compile(r":::|```")),
    ("Markdown link [text](url)", re.compile(r"\]\([^)\s]+\)")),
    ("Markdown heading", re.compile(r"^\s*#{1,6} \S")),
)


def markdown_leaks(text: str) -> list[str]:
    """Names of the patterns in LEAK_PATTERNS that ``text`` contains, each with the match."""
    return [f"{name}: {match.group(0)!r}" for name, pattern in LEAK_PATTERNS
            if (match := pattern.search(text))]
