"""One module per assignment; each exposes CHECKS, a list of :class:`bnlib.grading.checks.Check`."""
