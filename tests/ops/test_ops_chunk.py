"""The chunk backend against the reference recurrence: exact in float64 (outputs, final state and
gradients of every leaf), gradcheck, float32/bf16 stability on long sequences, and its memory."""

from __future__ import annotations

import itertools

import pytest
import torch
from ops_cases import (
    FEATURE_MAPS,
    NORMALISATIONS,
    RULES,
    assert_all_close,
    features,
    make_problem,
    outputs_and_gradients,
)

from fwp.ops import FastWeightState, fast_weight_recurrence

EXACT = 1e-10


@pytest.mark.parametrize(
    ("feature_map", "normalisation", "rule"), list(itertools.product(FEATURE_MAPS, NORMALISATIONS, RULES))
)
def test_chunk_matches_reference_for_every_configuration(
    feature_map: str, normalisation: str, rule: str
) -> None:
    chunk_size = 4
    problem = make_problem(
        rule=rule, feature_map=feature_map, normalisation=normalisation, T=3 * chunk_size + 5
    )
    assert_all_close(
        outputs_and_gradients(problem, backend="chunk", chunk_size=chunk_size),
        outputs_and_gradients(problem, backend="reference"),
        rel=EXACT,
    )


def _lengths(chunk_size: int) -> list[int]:
    return sorted({T for T in (1, chunk_size - 1, chunk_size, chunk_size + 1, 3 * chunk_size + 5) if T >= 1})


@pytest.mark.parametrize(
    ("rule", "normalisation", "chunk_size", "T"),
    [
        (rule, normalisation, chunk_size, T)
        for rule, normalisation in (("delta", "sum"), ("sum", "denominator"))
        for chunk_size in (1, 4, 16)
        for T in _lengths(chunk_size)
    ],
)
def test_chunk_matches_reference_for_every_length(
    rule: str, normalisation: str, chunk_size: int, T: int
) -> None:
    problem = make_problem(rule=rule, feature_map="dpfp2", normalisation=normalisation, B=2, T=T, seed=T)
    assert_all_close(
        outputs_and_gradients(problem, backend="chunk", chunk_size=chunk_size),
        outputs_and_gradients(problem, backend="reference"),
        rel=EXACT,
    )


@pytest.mark.parametrize(
    ("rule", "denominator"), [("sum", False), ("sum", True), ("delta", False), ("delta", True)]
)
def test_chunk_gradcheck(rule: str, denominator: bool) -> None:
    g = torch.Generator().manual_seed(3)
    B, H, T, d, d_v = 1, 2, 5, 3, 2

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()

    inputs = [rand(B, H, T, d), rand(B, H, T, d), rand(B, H, T, d_v), rand(B, H, d, d_v)]
    if rule == "delta":
        inputs.append(rand(B, H, T))
    if denominator:
        inputs.append(rand(B, H, d) + 1.0)

    def recurrence(q, k, v, W0, *rest):
        beta = rest[0] if rule == "delta" else None
        z0 = rest[-1] if denominator else None
        y, state = fast_weight_recurrence(
            q,
            k,
            v,
            beta,
            rule=rule,
            denominator=denominator,
            initial_state=FastWeightState(W0, z0),
            backend="chunk",
            chunk_size=2,
        )
        return (y, state.W) + ((state.z,) if denominator else ())

    assert torch.autograd.gradcheck(recurrence, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


LONG_T = 4096
STABILITY_CASES = [
    ("delta", "dpfp2", "sum"),
    ("delta", "elu", "sum"),
    ("delta", "favor", "sum"),
    ("sum", "dpfp2", "denominator"),
    ("sum", "elu", "denominator"),
    ("sum", "favor", "denominator"),
]


def _long_problem(rule: str, feature_map: str, normalisation: str):
    return make_problem(
        rule=rule, feature_map=feature_map, normalisation=normalisation, B=1, H=2, T=LONG_T, d_v=4
    )


def _rounded(problem, dtype: torch.dtype):
    """The same problem with every leaf rounded to ``dtype`` (and leaves of the same dtype)."""
    leaves = {name: x.detach().to(dtype).requires_grad_() for name, x in problem.leaves.items()}
    return type(problem)(
        **leaves | {"beta": leaves.get("beta"), "z0": leaves.get("z0")},
        feature_map=problem.feature_map,
        normalisation=problem.normalisation,
        rule=problem.rule,
    )


@pytest.mark.parametrize(("rule", "feature_map", "normalisation"), STABILITY_CASES)
def test_chunk_float32_is_stable_on_long_sequences(rule: str, feature_map: str, normalisation: str) -> None:
    problem = _long_problem(rule, feature_map, normalisation)
    expected = outputs_and_gradients(problem, backend="chunk", chunk_size=64)
    actual = outputs_and_gradients(_rounded(problem, torch.float32), backend="chunk", chunk_size=64)
    assert all(torch.isfinite(x).all() for x in actual.values())
    assert_all_close({name: x.double() for name, x in actual.items()}, expected, rel=1e-5)


@pytest.mark.parametrize(("rule", "feature_map", "normalisation"), [STABILITY_CASES[0], STABILITY_CASES[4]])
def test_chunk_under_bf16_autocast_matches_float64(rule: str, feature_map: str, normalisation: str) -> None:
    """bf16 features, values and β under autocast: the recurrence runs in float32, so the final state
    agrees with float64 (on the same bf16 values) to 1e-4 and the bf16 output to its rounding (≤ 2⁻⁸)."""
    problem = _long_problem(rule, feature_map, normalisation)
    with torch.no_grad():
        q, k = features(problem)
    bf16 = [None if x is None else x.detach().to(torch.bfloat16) for x in (q, k, problem.v, problem.beta)]
    denominator = normalisation == "denominator"

    def initial_state(dtype: torch.dtype) -> FastWeightState:
        z0 = problem.z0.detach().to(dtype) if denominator else None
        return FastWeightState(problem.W0.detach().to(dtype), z0)

    options = {"rule": rule, "denominator": denominator, "backend": "chunk", "chunk_size": 64}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = fast_weight_recurrence(*bf16, initial_state=initial_state(torch.float32), **options)
    with torch.no_grad():
        float64 = [None if x is None else x.double() for x in bf16]
        y64, state64 = fast_weight_recurrence(*float64, initial_state=initial_state(torch.float64), **options)
    assert y.dtype == torch.bfloat16 and state.W.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(state.W).all()
    assert (state.W.double() - state64.W).abs().max() <= 1e-4 * state64.W.abs().max()
    bf16_rounding = 2.0**-8 * y64.abs() + 1e-4 * y64.abs().max()
    assert ((y.double() - y64).abs() <= bf16_rounding).all()


@pytest.mark.parametrize("rule", RULES)
def test_chunk_saves_no_per_step_state(rule: str) -> None:
    """What the autograd graph keeps is O(T (d + d_v + C) + N d d_v), far below the T d d_v of a
    recurrence that stores W at every step."""
    B, H, T, d, d_v, chunk_size = 1, 1, 256, 16, 16, 16
    q, k, v = (torch.rand(B, H, T, n, requires_grad=True) for n in (d, d, d_v))
    beta = torch.rand(B, H, T, requires_grad=True) if rule == "delta" else None
    saved_elements = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved_elements.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        y, _ = fast_weight_recurrence(q, k, v, beta, rule=rule, backend="chunk", chunk_size=chunk_size)
    y.sum().backward()
    per_step_states = B * H * T * d * d_v
    assert 0 < sum(saved_elements) < per_step_states / 2


@pytest.mark.parametrize("rule", RULES)
def test_chunk_accepts_non_contiguous_inputs(rule: str) -> None:
    """Heads split from a ``[B, T, H, D]`` projection arrive as transposed views."""
    g = torch.Generator().manual_seed(5)
    B, T, H, d = 2, 11, 3, 4
    q, k, v = (torch.rand(B, T, H, d, generator=g, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64).transpose(1, 2) if rule == "delta" else None
    y, state = fast_weight_recurrence(q, k, v, beta, rule=rule, backend="chunk", chunk_size=4)
    y_ref, state_ref = fast_weight_recurrence(q, k, v, beta, rule=rule, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.W, state_ref.W, rtol=1e-10, atol=1e-10)
