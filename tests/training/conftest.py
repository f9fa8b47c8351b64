"""Run-time tests train tiny models in-process with one thread, each in its own working directory."""

from __future__ import annotations

import pytest
from lightning_runs import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield
