"""Packed sequences (``cu_seqlens``) on the ``triton`` backend, run in Triton's CPU interpreter: in float64,
packed on Triton equals one call per sequence on the reference backend (read-outs, final memories and
every gradient), for the delta rule and the sum rule with the denominator, with lengths around Triton's
chunk of 16 (the backend rounds ``chunk_size`` up to it), cut into several padded batches.

``TRITON_INTERPRET=1`` must be set before Triton decorates its kernels and would change what other
tests see, so the comparison runs in a child process: ``python -m tests.ops.test_packed_triton``
prints the largest relative error of each case as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CASES = ("delta", "sum+denominator")
LENGTHS = (17, 1, 16, 15)
TIMEOUT_SECONDS = 300


def relative_errors() -> dict[str, float]:
    """Per case, ``max |packed triton − separate reference| / max(1, |separate reference|)`` over every
    output and gradient (run with ``TRITON_INTERPRET=1``)."""
    from fwp.ops import cu_seqlens_from_lengths, packed_layout
    from tests.ops.test_packed_ops import (
        LAYERS,
        SMALL_GROUP_COST,
        leaves_of,
        outputs_and_gradients,
        packed,
        separate,
    )

    packed_layout.GROUP_COST = SMALL_GROUP_COST  # several groups, as in tests/ops/test_packed_ops.py
    errors = {}
    for name in CASES:
        layer = LAYERS[name]
        leaves = leaves_of(layer, LENGTHS, initial_state=True)
        expected = outputs_and_gradients(separate, layer, leaves, LENGTHS, "reference")
        actual = outputs_and_gradients(packed, layer, leaves, LENGTHS, "triton")
        assert len(packed_layout.PackedLayout.from_cu_seqlens(cu_seqlens_from_lengths(LENGTHS)).groups) > 1
        errors[name] = max(
            ((actual[key] - want).abs().max() / max(1.0, want.abs().max().item())).item()
            for key, want in expected.items()
        )
    return errors


def test_packed_on_triton_equals_separate_sequences() -> None:
    env = os.environ | {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.ops.test_packed_triton"],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    errors = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(errors) == set(CASES)
    assert all(error <= 1e-10 for error in errors.values()), errors


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    print(json.dumps(relative_errors()))
