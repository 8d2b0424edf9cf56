"""Progress bars show live and stay off the built book."""

import pytest

from bnlib.experiments.progress import progress_bar


@pytest.mark.parametrize(("desc", "environment", "shown"), [
    ("training", None, True),
    (None, None, False),
    ("training", "1", False),      # make book sets TQDM_DISABLE=1
    ("training", "true", False),
])
def test_a_bar_is_shown_only_when_described_and_not_disabled(monkeypatch, desc, environment,
                                                            shown):
    if environment is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", environment)
    bar = progress_bar(range(3), desc, leave=False)
    assert bar.disable is (not shown)  # read before iterating: a closed bar is disabled
    assert list(bar) == [0, 1, 2]
