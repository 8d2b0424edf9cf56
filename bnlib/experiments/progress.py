"""Progress bars for the experiments that train for more than a few seconds when run live."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable, desc: str | None, **options):
    """``iterable`` with tqdm's bar (a widget in Jupyter) labelled ``desc``; no bar when
    ``desc`` is None. ``options`` go to tqdm.

    No bar either where the environment sets ``TQDM_DISABLE`` (as ``make book`` does): a static
    page would keep the bar frozen where the build left it.
    """
    hidden = desc is None or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(iterable, desc=desc, disable=hidden, **options)
