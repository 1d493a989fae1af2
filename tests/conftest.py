"""Shared test settings: tiny models run fastest on one thread, and no test touches the user's cache."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tiny models pay more for thread hand-offs than they gain; on a loaded 2-core machine the default
    # thread pool made single calls up to 100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path_factory.mktemp("xaudit-cache")))
