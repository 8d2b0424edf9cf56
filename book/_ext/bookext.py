"""Small Sphinx fixes for this book (loaded from _config.yml as a local extension).

1. Drop repeated inline scripts from each page. sphinx-thebe 0.3.1 registers its inline
   configuration (``const THEBE_JS_URL = ...``) from an event that Sphinx 7.4 replays into each
   page's script list; the second copy fails with "Identifier 'THEBE_JS_URL' has already been
   declared" in the browser console.
2. Serve Thebe from this site. sphinx-thebe 0.3.1 has no setting for where Thebe's script comes
   from: its inline configuration names ``https://unpkg.com/thebe@0.8.2/lib/index.js``. With
   ``thebe_js_path`` set (a path under ``_static``, filled by ``book/fetch_assets.py``), each
   page's copy of that line points at the site's own file instead, relative to the page. Thebe
   in turn fetches MathJax 2 from a CDN to typeset outputs; ``thebe_mathjax_path`` (under
   ``_static``) goes into each page's Thebe configuration as its ``mathjaxUrl``.
3. Let docstrings write shapes the NumPy way, ``(N, C, *spatial)``, in plain text: a lone ``*``
   before a name would otherwise open reStructuredText emphasis that never closes.
"""

import re

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.osutil import relative_uri

# sphinx-thebe's inline script: const THEBE_JS_URL = "<url>"
_THEBE_JS_URL = re.compile(r'const THEBE_JS_URL = "[^"]*"')
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


def local_thebe_script(script, url: str):
    """``script`` with its THEBE_JS_URL set to ``url``; other scripts are returned unchanged."""
    body = None if isinstance(script, str) else script.attributes.get("body")
    if not body or not _THEBE_JS_URL.search(body):
        return script
    local_body = _THEBE_JS_URL.sub(f'const THEBE_JS_URL = "{url}"', body)
    attributes = {**script.attributes, "body": local_body}
    # Sphinx's script objects are immutable and shared by every page: make a new one.
    return type(script)(script.filename, priority=script.priority, **attributes)


def _serve_thebe_locally(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts or not app.config.thebe_js_path:
        return
    url = context["pathto"](f"_static/{app.config.thebe_js_path}", 1)
    context["script_files"] = [local_thebe_script(script, url) for script in scripts]


def _thebe_mathjax_locally(app, doctree, docname):
    if not app.config.thebe_mathjax_path or app.builder.format != "html":
        return
    url = relative_uri(app.builder.get_target_uri(docname),
                       f"_static/{app.config.thebe_mathjax_path}")
    for raw in doctree.findall(nodes.raw):
        if 'type="text/x-thebe-config"' in raw.astext():
            # sphinx-thebe writes the configuration as a JavaScript object literal.
            text = raw.astext().replace("requestKernel: true,",
                                        f'requestKernel: true,\n        mathjaxUrl: "{url}",', 1)
            raw.replace_self(nodes.raw(text=text, format="html"))


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
    app.add_config_value("thebe_js_path", "", "html")
    app.add_config_value("thebe_mathjax_path", "", "html")
    app.connect("html-page-context", _drop_repeated_inline_scripts, priority=900)
    app.connect("html-page-context", _serve_thebe_locally, priority=901)
    app.connect("doctree-resolved", _thebe_mathjax_locally, priority=900)
    app.connect("autodoc-process-docstring", _escape_docstring, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
