"""Shared test setup: keep every cache the tests write out of the user's home folder."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NPVAE_CACHE_DIR", str(tmp_path_factory.mktemp("npvae-cache")))
    yield
    mp.undo()
