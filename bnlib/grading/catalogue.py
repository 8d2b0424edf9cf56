"""The catalogue of common mistakes, each with the diagnosis the checks give.

Mistakes are declared with the graded function they concern (``assignments/<name>.py``); this
module lists them all. Each plants itself into the solution notebook (``plant``: (old, new)
replacements applied to the notebook's code cells, each ``old`` occurring exactly once) and
names the words the feedback must contain. The exercise tests plant every entry, grade the
notebook with ``nbgrader autograde`` and check that points are lost and the feedback contains
``diagnosis``.
"""

from __future__ import annotations

from bnlib.grading.assignments import declared
from bnlib.grading.checks import Mistake

MISTAKES: tuple[Mistake, ...] = tuple(m for a in declared() for m in a.mistakes)
CATALOGUE: dict[str, Mistake] = {m.id: m for m in MISTAKES}


def plant_into(sources: list[str], mistake: Mistake) -> list[str]:
    """Apply ``mistake.plant`` to a notebook's code cell sources; each ``old`` must occur once."""
    sources = list(sources)
    for old, new in mistake.plant:
        hits = [i for i, source in enumerate(sources) if old in source]
        if len(hits) != 1 or sources[hits[0]].count(old) != 1:
            raise ValueError(f"{mistake.id}: {old!r} must occur exactly once in the notebook, "
                             f"found it in {len(hits)} cells")
        sources[hits[0]] = sources[hits[0]].replace(old, new)
    return sources


__all__ = ["CATALOGUE", "MISTAKES", "Mistake", "plant_into"]
