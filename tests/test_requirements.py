"""The install is reproducible: every requirement is pinned, to the versions the project needs."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    unpinned = [entry for entry in entries if "==" not in entry]
    assert not unpinned, f"unpinned requirements: {unpinned}"
    return {name.lower(): version for name, version in (e.split("==") for e in entries)}


def test_every_requirement_is_pinned_to_the_required_series():
    versions = pins()
    assert versions["torch"] == "2.13.0"  # the CPU wheel cached on the machines, not a CUDA build
    assert versions["jupyter-book"].startswith("1.0.")  # 2.x ignores _config.yml and _toc.yml
    assert versions["nbgrader"].startswith("0.9.")
    assert versions["python-dateutil"] == "2.9.0.post0"  # the one celery 5.7 accepts
    for needed in ("numpy", "ipywidgets", "matplotlib", "scikit-learn", "tqdm", "pytest",
                   "hypothesis", "ruff", "myst-nb", "jupytext", "sphinxcontrib-bibtex",
                   "keras", "triton", "playwright", "celery", "redis"):
        assert needed in versions, f"{needed} is missing from requirements.txt"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine brings its own torch build")
def test_installed_torch_is_the_pinned_cpu_build():
    assert torch.__version__.split("+")[0] == pins()["torch"]
    assert torch.version.cuda is None
