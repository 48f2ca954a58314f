"""Shared fixtures: the embedded benchmark is built once per session (and reused by notebook 01)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_benchmark():
    """The default embedded benchmark in data/processed/embedded (built from ../shared if absent)."""
    from afr.data.embedded import build_embedded_benchmark

    return build_embedded_benchmark(progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: MTCNN's many tiny convolutions only lose from more on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector():
    """An MTCNN on the shared weights (CPU)."""
    from afr.align.mtcnn import MTCNN

    return MTCNN()
