"""``python -m bnlib.grading.assignments``: the assignment names, one per line (the Makefile's
list of assignments)."""

from bnlib.grading import ASSIGNMENTS

print("\n".join(ASSIGNMENTS))
