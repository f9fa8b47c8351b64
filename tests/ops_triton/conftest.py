"""The Triton kernels run in Triton's CPU interpreter, in a child process.

``TRITON_INTERPRET=1`` only takes effect if it is set before Triton decorates the kernels, and setting
it in the pytest process would also change what every other test sees (a CPU call of the triton
backend must fail without it). So the comparisons run in a fresh ``python`` with the variable in its
environment: ``triton_interpreted_cases.py``, given a JSON list of cases, prints their errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CASES_SCRIPT = Path(__file__).with_name("triton_interpreted_cases.py")
TIMEOUT_SECONDS = 300


def run_interpreted_cases(cases: list[dict]) -> list[dict[str, float]]:
    """Relative errors of the triton backend against the reference for each case (see the script)."""
    env = os.environ | {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(CASES_SCRIPT), json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(f"interpreted Triton run failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def interpreted() -> Callable[[list[dict]], list[dict[str, float]]]:
    """``interpreted(cases)`` → one dict of relative errors per case."""
    return run_interpreted_cases
