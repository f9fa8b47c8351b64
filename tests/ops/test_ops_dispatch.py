"""Backend choice and dtypes of ``fast_weight_recurrence``."""

from __future__ import annotations

import pytest
import torch

from fwp.ops import BACKENDS, fast_weight_recurrence, load_backend, resolve_backend


@pytest.mark.parametrize(("T", "expected"), [(1, "step"), (2, "chunk"), (300, "chunk")])
def test_auto_picks_chunk_for_sequences_and_step_for_single_tokens_on_cpu(T: int, expected: str) -> None:
    assert resolve_backend("auto", torch.zeros(1, 1, T, 2)) == expected


def test_named_backend_is_kept() -> None:
    assert resolve_backend("reference", torch.zeros(1, 1, 64, 2)) == "reference"


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"backend must be one of \['auto', 'reference', 'step', 'chunk', 'triton'\]"
    ):
        load_backend("fused")


@pytest.mark.parametrize("name", ["reference", "step", "chunk"])
def test_cpu_backends_load(name: str) -> None:
    assert callable(load_backend(name)) and name in BACKENDS


def _inputs(dtype: torch.dtype, rule: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(2, 2, 9, 3, generator=g).to(dtype) for _ in range(3))
    beta = torch.rand(2, 2, 9, generator=g).to(dtype) if rule == "delta" else None
    return q, k, v, beta


@pytest.mark.parametrize("rule", ["sum", "delta"])
@pytest.mark.parametrize("backend", ["auto", "reference", "step", "chunk"])
def test_float64_inputs_keep_float64(rule: str, backend: str) -> None:
    y, state = fast_weight_recurrence(
        *_inputs(torch.float64, rule), rule=rule, denominator=True, backend=backend
    )
    assert y.dtype == state.W.dtype == state.z.dtype == torch.float64


@pytest.mark.parametrize("rule", ["sum", "delta"])
@pytest.mark.parametrize("backend", ["auto", "reference", "step", "chunk"])
def test_bfloat16_inputs_give_bfloat16_output_and_float32_state(rule: str, backend: str) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = fast_weight_recurrence(
            *_inputs(torch.bfloat16, rule), rule=rule, denominator=True, backend=backend
        )
    assert y.dtype == torch.bfloat16
    assert state.W.dtype == state.z.dtype == torch.float32
