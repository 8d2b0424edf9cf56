"""Small Sphinx fixes for this book (loaded from _config.yml as a local extension).

1. Drop repeated inline scripts from each page. sphinx-thebe 0.3.1 registers its inline
   configuration (``const THEBE_JS_URL = ...``) from an event that Sphinx 7.4 replays into each
   page's script list; the second copy fails with "Identifier 'THEBE_JS_URL' has already been
   declared" in the browser console.
2. Let docstrings write shapes the NumPy way, ``(N, C, *spatial)``, in plain text: a lone ``*``
   before a name would otherwise open reStructuredText emphasis that never closes.
"""

import re

from sphinx.application import Sphinx

# "*name" right after "(", "," or a space, outside ``literals``.
_STARRED_NAME = re.compile(r"(?<=[(,\s])\*(?=[A-Za-z_]\w*[),\s])")


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen_bodies = set()
    kept = []
    for script in scripts:
        body = None if isinstance(script, str) else script.attributes.get("body")
        if body:
            if body in seen_bodies:
                continue
            seen_bodies.add(body)
        kept.append(script)
    context["script_files"] = kept


def escape_starred_names(line: str) -> str:
    """Escape ``*name`` outside inline literals: ``(N, *spatial)`` -> ``(N, \\*spatial)``."""
    pieces = line.split("``")
    # Even pieces are outside ``...`` literals.
    for index in range(0, len(pieces), 2):
        pieces[index] = _STARRED_NAME.sub(r"\\*", pieces[index])
    return "``".join(pieces)


def _escape_docstring(app, what, name, obj, options, lines):
    lines[:] = [escape_starred_names(line) for line in lines]


def setup(app: Sphinx):
    # Late priorities: run after other extensions have added scripts or rewritten docstrings.
    app.connect("html-page-context", _drop_repeated_inline_scripts, priority=900)
    app.connect("autodoc-process-docstring", _escape_docstring, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
