"""The detector of Markdown shown as text (markdown_leaks.py), on text a page might show."""

import pytest

from .markdown_leaks import markdown_leaks


@pytest.mark.parametrize(
    "text, leak",
    [
        ("| normalization | batch 2 | batch 4 | |—|—|—| | BN | 0.81 | 0.90 |", "pipe table"),
        ("|---|---|", "pipe table"),
        ("| BN | 0.81 |\n| LN | 0.90 |", "pipe table"),
        ("the variance $$\\sigma^2$$ of the batch", "$$"),
        ("the mean $\\mu_B$ of the batch", "inline maths"),
        ("the mean \\(\\mu\\) of the batch", "untypeset maths"),
        ("$\\mathcal{D}$, $\\lvert\\mathcal{D}", "TeX command"),
        ("this is **the** key result", "bold"),
        ("as shown by {cite}`ioffe2015`", "MyST role"),
        ("accuracy {glue:text}`acc:.1%` after training", "MyST role"),
        (":::{admonition} Note", "directive fence"),
        ("see [the paper](https://arxiv.org/abs/1502.03167)", "Markdown link"),
        ("## Results", "Markdown heading"),
    ],
)
def test_finds_markdown_shown_as_text(text, leak):
    found = markdown_leaks(text)
    assert any(leak in item for item in found), (text, found)


@pytest.mark.parametrize(
    "text",
    [
        "Batch normalization keeps the mean at 0 and the variance at 1 (up to ε).",
        "BN costs 12 bytes per element: it reads x twice and writes y once.",
        "The ratio is 1.03, i.e. 3% above the bound; see chapter 5 (inference).",
        "Sizes {2, 4, 8} and a set {N, C}; a price of 5 $ is no maths.",
        "Keras's momentum is 1 − α: 0.99 by default.",
        "a value of type np.ndarray | int | float | str",
        "plain sums of x and x**2, and a function f(x, **kwargs)",
    ],
)
def test_accepts_ordinary_prose(text):
    assert markdown_leaks(text) == []
