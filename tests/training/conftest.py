"""Run-time tests train tiny models in-process with one thread: it is fastest for them, leaves the
other core to the DDP subprocesses and to whatever else shares the machine, and keeps runs that are
compared bit for bit on the same reduction order. Each test runs in its own temporary directory (runs
without a logger write checkpoints and config.yaml into the working directory)."""

from __future__ import annotations

import pytest
from lightning_runs import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
