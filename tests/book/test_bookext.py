"""book/_ext/bookext.py: sphinx-thebe's inline configuration points at the site's own Thebe."""

import importlib.util
import sys

import pytest
from sphinx.builders.html._assets import _JavaScript

from .conftest import ROOT


@pytest.fixture(scope="module")
def bookext():
    spec = importlib.util.spec_from_file_location("bookext", ROOT / "book" / "_ext" / "bookext.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bookext", module)
    spec.loader.exec_module(module)
    return module


def test_thebe_url_points_at_the_local_copy(bookext):
    body = ('const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"; '
            'const thebe_selector = ".cell"')
    inline = _JavaScript(None, priority=500, body=body)
    local = bookext.local_thebe_script(inline, "../_static/thebe/lib/index.js")
    assert local.attributes["body"] == ('const THEBE_JS_URL = "../_static/thebe/lib/index.js"; '
                                        'const thebe_selector = ".cell"')
    assert local.priority == inline.priority
    assert "unpkg" in inline.attributes["body"], "the shared script object must stay unchanged"


def test_other_scripts_are_left_alone(bookext):
    script = _JavaScript("sphinx-thebe.js", priority=500, **{"async": "async"})
    assert bookext.local_thebe_script(script, "x.js") is script
    assert bookext.local_thebe_script("plain.js", "x.js") == "plain.js"
