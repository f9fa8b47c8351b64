"""Tiny language models run fastest on one thread, which also leaves the other core of a shared CPU
alone."""

from __future__ import annotations

import pytest
from lightning_runs import one_torch_thread


@pytest.fixture
def one_thread():
    """One torch thread for the test, the previous number restored after it."""
    with one_torch_thread():
        yield
