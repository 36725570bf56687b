"""Fixtures of the training tests.

A checkpoint that training writes carries no exported graphs: the first
:meth:`captioner.Captioner.load` of it (a test's, or ``captioner evaluate``'s and
``captioner caption``'s) exports them into the cache. Here that cache is one folder per
test session, never the user's ``~/.cache/captioner``.
"""

from __future__ import annotations

import pytest

from captioner.cache import CACHE_ENV, LEGACY_CACHE_ENV


@pytest.fixture(scope="session", autouse=True)
def graphs_cache(tmp_path_factory):
    """``$CAPTIONER_CACHE_DIR`` for the session: a fresh folder."""
    folder = tmp_path_factory.mktemp("captioner-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        mp.delenv(LEGACY_CACHE_ENV, raising=False)
        yield folder
