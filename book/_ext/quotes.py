"""Quotations in a language other than English: the original, marked with its translation.

Every such quotation is declared once, in ``book/quotes/*.yml``, under a key::

    capacity-restored:
      source: a Chinese-language course on CNNs (Cupoy, D14)
      lang: zh-Hant
      original: 從而保證整個 network 的 capacity
      translation: so that the capacity of the whole network is preserved

and quoted by that key, so it reads the same wherever it recurs:

- inline, ``{translated}`capacity-restored``` gives
  "so that ... preserved" (translated from 「從而保證 ...」);
- as a block, ``:::{translated-quote} capacity-restored`` gives the original, its translation
  and the source.

An unknown key, a key declared twice or an entry without its four fields is a build warning
(the book builds with warnings as errors).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole

logger = logging.getLogger(__name__)

FIELDS = ("source", "lang", "original", "translation")


def load_quotes(folder: Path) -> dict[str, dict[str, str]]:
    """Read every ``*.yml`` in ``folder`` into one table, key -> fields."""
    quotes: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*.yml")):
        for key, entry in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items():
            missing = [field for field in FIELDS if not (entry or {}).get(field)]
            if missing:
                logger.warning(f"{path.name}: quotation {key!r} lacks {', '.join(missing)}")
            elif key in quotes:
                logger.warning(f"{path.name}: quotation {key!r} is declared twice")
            else:
                quotes[key] = {field: str(entry[field]).strip() for field in FIELDS}
    return quotes


def lookup(env, key: str, location) -> dict[str, str] | None:
    entry = env.app.config.translated_quotes_table.get(key)
    if entry is None:
        logger.warning(f"unknown quotation key {key!r} (declare it in book/quotes/)",
                       location=location)
    return entry


def original_text(entry: dict[str, str]) -> nodes.inline:
    """The original words, tagged with their language so screen readers pronounce them."""
    node = nodes.inline(text=f"「{entry['original']}」", classes=["quote-original"])
    node["lang"] = entry["lang"]
    return node


class TranslatedRole(SphinxRole):
    def run(self):
        entry = lookup(self.env, self.text.strip(), self.get_location())
        if entry is None:
            return [nodes.inline(text=self.text)], []
        quote = nodes.inline(classes=["translated-quote"])
        quote += nodes.Text(f"“{entry['translation']}” (translated from ")
        quote += original_text(entry)
        quote += nodes.Text(")")
        return [quote], []


class TranslatedQuoteDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        entry = lookup(self.env, self.arguments[0], self.get_location())
        if entry is None:
            return []
        block = nodes.block_quote(classes=["translated-quote"])
        block += nodes.paragraph("", "", original_text(entry))
        block += nodes.paragraph("", "", nodes.emphasis(text="Translation: "),
                                 nodes.Text(f"“{entry['translation']}”"))
        block += nodes.attribution(text=entry["source"])
        return [block]


def read_table(app: Sphinx, config) -> None:
    folder = Path(app.confdir) / "book" / "quotes"
    config.translated_quotes_table = load_quotes(folder)


def setup(app: Sphinx):
    app.add_config_value("translated_quotes_table", {}, "env")
    app.connect("config-inited", read_table)
    app.add_role("translated", TranslatedRole())
    app.add_directive("translated-quote", TranslatedQuoteDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
