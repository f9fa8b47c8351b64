"""Every backbone test starts from the same random seed, on one thread (tiny tensors: more threads
only oversubscribe a shared CPU)."""

from __future__ import annotations

import pytest
import torch
from lightning_runs import one_torch_thread


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    with one_torch_thread():
        yield
