"""Shared fixtures: the embedded benchmark is built once per session (and reused by notebook 01)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_benchmark():
    """The default embedded benchmark in data/processed/embedded (built from ../shared if absent)."""
    from afr.data.embedded import build_embedded_benchmark

    return build_embedded_benchmark(progress=False)
