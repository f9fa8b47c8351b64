"""The gated chunk backend against the gated reference recurrence: exact in float64 (outputs, final
state and the gradients of every leaf, log_decay and the initial state included) over the lengths
around the chunk size, gradcheck, strong decay over long sequences, bf16 inputs at T = 4096, and
the custom ops' registrations."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fwp.ops.gated_chunk import gated_delta_rule_chunks, gated_sum_rule_chunks
from fwp.ops.state import FastWeightState
from tests.ops.gated_cases import (
    ALPHA_MIN_LOG,
    gated_outputs_and_gradients,
    gated_recurrence,
    make_gated_problem,
)
from tests.ops.ops_cases import assert_all_close

EXACT = 1e-10


def lengths(chunk_size: int) -> list[int]:
    """``T ∈ {1, C − 1, C, C + 1, 3C + 5}`` (those ≥ 1)."""
    return sorted({T for T in (1, chunk_size - 1, chunk_size, chunk_size + 1, 3 * chunk_size + 5) if T >= 1})


@pytest.mark.parametrize(
    ("rule", "normalisation", "chunk_size", "T"),
    [
        (rule, normalisation, chunk_size, T)
        for rule in ("sum", "delta")
        for normalisation, sizes in (("sum", (1, 4, 16)), ("denominator", (4,)), ("none", (4,)))
        for chunk_size in sizes
        for T in lengths(chunk_size)
    ],
)
def test_gated_chunk_matches_reference_for_every_length(
    rule: str, normalisation: str, chunk_size: int, T: int
) -> None:
    problem = make_gated_problem(
        rule=rule, normalisation=normalisation, feature_map="dpfp2", B=2, T=T, seed=T
    )
    assert_all_close(
        gated_outputs_and_gradients(problem, backend="chunk", chunk_size=chunk_size),
        gated_outputs_and_gradients(problem, backend="reference"),
        rel=EXACT,
    )


@pytest.mark.parametrize("rule", ["sum", "delta"])
@pytest.mark.parametrize("strongest", [-1.0, ALPHA_MIN_LOG])
def test_gated_chunk_matches_reference_with_decays_down_to_1e_6(rule: str, strongest: float) -> None:
    """Decays α ∈ [1e-6, 1] (log-decays down to −13.8) with identity features (any sign)."""
    problem = make_gated_problem(
        rule=rule, normalisation="none", feature_map="identity", T=29, strongest=strongest
    )
    assert_all_close(
        gated_outputs_and_gradients(problem, backend="chunk", chunk_size=8),
        gated_outputs_and_gradients(problem, backend="reference"),
        rel=EXACT,
    )


@pytest.mark.parametrize(
    ("rule", "denominator"), [("sum", False), ("sum", True), ("delta", False), ("delta", True)]
)
def test_gated_chunk_gradcheck(rule: str, denominator: bool) -> None:
    g = torch.Generator().manual_seed(3)
    B, H, T, d, d_v = 1, 2, 5, 3, 2

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    inputs = [rand(B, H, T, d), rand(B, H, T, d), rand(B, H, T, d_v), rand(B, H, d, d_v), -2 * rand(B, H, T)]
    inputs += [rand(B, H, T)] if rule == "delta" else []
    inputs += [rand(B, H, d) + 1.0] if denominator else []

    def recurrence(q, k, v, W0, log_decay, *rest):
        beta = rest[0] if rule == "delta" else None
        state = FastWeightState(W0, rest[-1] if denominator else None)
        options = {"backend": "chunk", "chunk_size": 2, "denominator": denominator}
        y, final = gated_recurrence(q, k, v, beta, log_decay, state, **options)
        return (y, final.W) + ((final.z,) if denominator else ())

    inputs = tuple(x.requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(recurrence, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def rounded(problem, dtype: torch.dtype):
    """The same gated problem with every leaf rounded to ``dtype``."""
    leaves = {name: x.detach().to(dtype).requires_grad_() for name, x in problem.leaves.items()}
    log_decay = leaves.pop("log_decay")
    base = type(problem.base)(
        **leaves | {"beta": leaves.get("beta"), "z0": leaves.get("z0")},
        feature_map=problem.base.feature_map,
        normalisation=problem.base.normalisation,
        rule=problem.base.rule,
    )
    return type(problem)(base, log_decay)


@pytest.mark.parametrize(("rule", "normalisation"), [("delta", "sum"), ("sum", "denominator")])
def test_strong_decay_on_long_sequences_stays_finite_and_float32_agrees(
    rule: str, normalisation: str
) -> None:
    """T = 2048, α down to 1e-6 (log-decays to −13.8; cumulative log-decays of a chunk of 64 reach
    about −440): outputs and every gradient finite in float32 and within 1e-5 (relative to each
    entry's largest magnitude) of float64."""
    problem = make_gated_problem(
        rule=rule,
        normalisation=normalisation,
        feature_map="dpfp2",
        B=1,
        H=2,
        T=2048,
        d_v=4,
        strongest=ALPHA_MIN_LOG,
    )
    expected = gated_outputs_and_gradients(problem, backend="chunk", chunk_size=64)
    actual = gated_outputs_and_gradients(rounded(problem, torch.float32), backend="chunk", chunk_size=64)
    assert all(torch.isfinite(x).all() for x in actual.values())
    assert_all_close({name: x.double() for name, x in actual.items()}, expected, rel=1e-5)


@pytest.mark.parametrize(("rule", "normalisation"), [("delta", "sum"), ("sum", "denominator")])
def test_bf16_autocast_inputs_at_4096_steps_agree_with_float64(rule: str, normalisation: str) -> None:
    """Features, values, β and log-decays made in bf16 under autocast and run as ``fast_weight_recurrence``
    runs every backend (float32, autocast off): at T = 4096 with decays in [0.05, 1], the final state
    agrees with float64 on the same bf16 values to 1e-4 of its largest entry and the output to 1e-4 of
    its largest entry plus 2⁻⁸ of its own size (bf16 output rounding)."""
    problem = make_gated_problem(
        rule=rule, normalisation=normalisation, feature_map="elu", B=1, H=2, T=4096, d_v=4, strongest=-3.0
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, k = (torch.nn.functional.elu(x.to(torch.bfloat16)) + 1 for x in (problem.base.q, problem.base.k))
        if normalisation == "sum":
            q, k = (x / x.sum(-1, keepdim=True) for x in (q, k))
    raw = [problem.base.v, problem.base.beta, problem.log_decay]
    bf16 = [q, k] + [None if x is None else x.detach().to(torch.bfloat16) for x in raw]
    denominator = normalisation == "denominator"

    def run(dtype: torch.dtype) -> tuple[Tensor, FastWeightState]:
        q, k, v, beta, log_decay = (None if x is None else x.to(dtype) for x in bf16)
        z0 = problem.base.z0.detach().to(dtype) if denominator else None
        state = FastWeightState(problem.base.W0.detach().to(dtype), z0)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            options = {"backend": "chunk", "chunk_size": 64, "denominator": denominator}
            return gated_recurrence(q, k, v, beta, log_decay, state, **options)

    (y, state), (y64, state64) = run(torch.float32), run(torch.float64)
    y = y.to(torch.bfloat16)
    assert torch.isfinite(y).all() and torch.isfinite(state.W).all()
    assert (state.W.double() - state64.W).abs().max() <= 1e-4 * state64.W.abs().max()
    assert ((y.double() - y64).abs() <= 2.0**-8 * y64.abs() + 1e-4 * y64.abs().max()).all()


def opcheck_cases() -> dict[str, tuple]:
    """Each gated ``fwp::`` op with valid float64 arguments (chunked shapes G = 2, N = 2, C = 3);
    the backward ops get the residuals of a forward call and random output gradients."""
    g = torch.Generator().manual_seed(5)
    G, N, C, d, d_v = 2, 2, 3, 4, 2

    def rand(*shape: int, scale: float = 0.5) -> Tensor:
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v, initial = rand(G, N, C, d), rand(G, N, C, d), rand(G, N, C, d_v), rand(G, d, d_v)
    beta = torch.rand(G, N, C, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(G, N, C, generator=g, dtype=torch.float64)
    d_out, d_final = rand(G, N, C, d_v), rand(G, d, d_v)
    _, _, *sum_residuals = gated_sum_rule_chunks(q, k, v, log_decay, initial)
    _, _, *delta_residuals = gated_delta_rule_chunks(q, k, v, beta, log_decay, initial)
    grad = [x.clone().requires_grad_() for x in (q, k, v, beta, log_decay, initial)]
    ops = torch.ops.fwp
    return {
        "gated_sum_rule_chunks": (ops.gated_sum_rule_chunks, (*grad[:3], *grad[4:])),
        "gated_delta_rule_chunks": (ops.gated_delta_rule_chunks, tuple(grad)),
        "gated_sum_rule_chunks_backward": (
            ops.gated_sum_rule_chunks_backward,
            (q, k, v, log_decay, *sum_residuals, d_out, d_final),
        ),
        "gated_delta_rule_chunks_backward": (
            ops.gated_delta_rule_chunks_backward,
            (q, k, v, beta, log_decay, *delta_residuals, d_out, d_final),
        ),
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_gated_custom_op_passes_opcheck(name: str) -> None:
    """Schema, fake implementation (shapes, strides, dtypes of every output), autograd registration and
    tracing by AOT autograd."""
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_gated_chunk_compiles_to_one_graph_and_equals_eager(rule: str) -> None:
    """``torch.compile(fullgraph=True)`` (aot_eager) of the gated chunk backend with the denominator:
    outputs, final state and every gradient equal eager in float64."""
    torch._dynamo.reset()
    problem = make_gated_problem(rule=rule, normalisation="denominator", T=7)
    eager = gated_outputs_and_gradients(problem, backend="chunk")
    import tests.ops.gated_cases as cases

    original = cases.GATED_BACKENDS["chunk"]
    cases.GATED_BACKENDS["chunk"] = torch.compile(original, backend="aot_eager", fullgraph=True)
    try:
        assert_all_close(gated_outputs_and_gradients(problem, backend="chunk"), eager, rel=1e-12)
    finally:
        cases.GATED_BACKENDS["chunk"] = original
        torch._dynamo.reset()
