"""Experiments behind the chapters' figures: each module serves one or two chapters."""
