"""Binder's environment (binder/): parseable, pinned like requirements.txt, and complete.

repo2docker cannot run here (no network to mybinder.org), so these tests check what can be
checked offline: the files exist and parse, every pin agrees with the project's
requirements.txt, every third-party module the chapters import is installed, and postBuild
installs bnlib and switches off nbgrader's instructor tools.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

BINDER = ROOT / "binder"
# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "IPython": "ipython", "myst_nb": "myst-nb",
                   "yaml": "pyyaml", "PIL": "pillow"}
# Installed as dependencies of pinned packages (ipython by ipykernel, tqdm pinned explicitly).
PROVIDED_BY_OTHERS = {"ipython"}


def pins(path) -> dict[str, str]:
    """``{canonical name: version}`` for each ``name==version`` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{path.name}: {line!r} is not pinned with =="
        )
        found[canonicalize_name(requirement.name)] = specifiers[0].version
    return found


def test_runtime_is_python_312():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.12"


def test_binder_pins_agree_with_requirements():
    binder, project = pins(BINDER / "requirements.txt"), pins(ROOT / "requirements.txt")
    disagreements = {name: (version, project[name]) for name, version in binder.items()
                     if name in project and project[name] != version}
    assert not disagreements, f"binder pin vs requirements.txt: {disagreements}"
    assert binder["torch"] == "2.13.0"


def test_binder_uses_the_cpu_torch_index():
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines


def test_binder_installs_what_the_chapters_import():
    binder = set(pins(BINDER / "requirements.txt")) | PROVIDED_BY_OTHERS
    imported = set()
    for chapter in (ROOT / "chapters").glob("*.md"):
        for cell in re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", chapter.read_text(),
                               re.MULTILINE | re.DOTALL):
            imported |= set(re.findall(r"^\s*(?:import|from) +([A-Za-z_]\w*)", cell,
                                       re.MULTILINE))
    third_party = {m for m in imported
                   if m not in sys.stdlib_module_names and m != "bnlib" and m != "__future__"}
    missing = {m for m in third_party
               if canonicalize_name(DISTRIBUTION_OF.get(m, m)) not in binder}
    assert not missing, f"chapters import what binder/requirements.txt lacks: {sorted(missing)}"


def test_post_build_is_executable_bash():
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert post_build.read_text().startswith("#!/usr/bin/env bash\n")
    result = subprocess.run(["bash", "-n", str(post_build)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_post_build_installs_bnlib_and_disables_instructor_tools():
    text = (BINDER / "postBuild").read_text()
    assert re.search(r"pip install .*-e \.$", text, re.MULTILINE)
    server_config = json.loads(text.split("<<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0])
    extensions = server_config["ServerApp"]["jpserver_extensions"]
    for name in ("formgrader", "assignment_list", "course_list"):
        assert extensions[f"nbgrader.server_extensions.{name}"] is False
    assert extensions["nbgrader.server_extensions.validate_assignment"] is True
    for plugin in ("formgrader", "assignment-list", "course-list", "create-assignment"):
        assert plugin in text


@pytest.mark.parametrize("name", ["formgrader", "assignment_list", "course_list",
                                  "validate_assignment"])
def test_disabled_server_extensions_exist_in_nbgrader(name):
    """The names postBuild switches off are real nbgrader server extensions."""
    import importlib

    importlib.import_module(f"nbgrader.server_extensions.{name}")
