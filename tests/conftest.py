"""Shared fixtures: the embedded benchmark is built once per session (and reused by notebook 01).

``@pytest.mark.shared("data/faces/orl", ...)`` marks a test that reads those paths of the shared
folder. The shared folder is a requirement of these tests, not an option: a missing path fails the
test (during setup, with one line naming the path) instead of skipping it.
"""
from __future__ import annotations

import pytest

from afr.paths import shared_root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared(*paths): paths inside the shared folder the test reads; a missing one fails the test"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("shared"):
        for relative in marker.args:
            path = shared_root() / relative
            if not path.exists():
                pytest.fail(
                    f"{path} not found: these tests need the shared data/weights folder "
                    "(set AFR_SHARED to point elsewhere)",
                    pytrace=False,
                )


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
