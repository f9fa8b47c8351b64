"""The fast-weight ops under ``torch.compile(fullgraph=True)``: one graph, the eager results in float64.

``fullgraph=True`` turns any graph break into an error. The ``aot_eager`` backend traces forward and
backward through the custom ops' fake implementations and registered autograd (what inductor sees)
without generating code; ``torch.library.opcheck`` tests each ``fwp::`` op's schema, fake
implementation and autograd registration.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import tests.ops.ops_cases as cases
from fwp.ops import Normalization, fast_weight_attention, fast_weight_recurrence
from fwp.ops.chunk import delta_rule_chunks, sum_rule_chunks
from tests.ops.ops_cases import assert_all_close, make_problem, outputs_and_gradients

G, N, C, D, D_V = 2, 2, 3, 4, 2


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(function: Any) -> Any:
    """``function`` compiled as one graph per call: any graph break raises."""
    return torch.compile(function, backend="aot_eager", fullgraph=True)


def chunked_inputs(*, grad: bool) -> dict[str, Tensor]:
    """Chunked float64 inputs of the chunk ops: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, beta
    ``[G, N, C]`` in (0, 1), initial ``[G, d, d_v]``."""
    g = torch.Generator().manual_seed(5)
    shapes = {"q": (G, N, C, D), "k": (G, N, C, D), "v": (G, N, C, D_V), "initial": (G, D, D_V)}
    inputs = {
        name: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64) for name, shape in shapes.items()
    }
    inputs["beta"] = torch.rand(G, N, C, generator=g, dtype=torch.float64)
    return {name: x.requires_grad_(grad) for name, x in inputs.items()}


def opcheck_cases() -> dict[str, tuple[Any, tuple[Tensor, ...]]]:
    """Each ``fwp::`` op with valid arguments; the backward ops get the residuals of a forward call and
    random output gradients."""
    x = chunked_inputs(grad=True)
    plain = {name: t.detach() for name, t in x.items()}
    q, k, v, beta, initial = (plain[name] for name in ("q", "k", "v", "beta", "initial"))
    g = torch.Generator().manual_seed(6)
    d_out = torch.randn(G, N, C, D_V, generator=g, dtype=torch.float64)
    d_final = torch.randn(G, D, D_V, generator=g, dtype=torch.float64)
    _, _, sum_starts = sum_rule_chunks(q, k, v, initial)
    _, _, inverse, delta_starts = delta_rule_chunks(q, k, v, beta, initial)
    ops = torch.ops.fwp
    return {
        "sum_rule_chunks": (ops.sum_rule_chunks, (x["q"], x["k"], x["v"], x["initial"])),
        "delta_rule_chunks": (ops.delta_rule_chunks, (x["q"], x["k"], x["v"], x["beta"], x["initial"])),
        "sum_rule_chunks_backward": (ops.sum_rule_chunks_backward, (q, k, v, sum_starts, d_out, d_final)),
        "delta_rule_chunks_backward": (
            ops.delta_rule_chunks_backward,
            (q, k, v, beta, inverse, delta_starts, d_out, d_final),
        ),
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_custom_op_passes_opcheck(name: str) -> None:
    """Schema, fake implementation (shapes, strides, dtypes of every output), autograd registration and
    tracing by AOT autograd with dynamic shapes."""
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["chunk", "reference"])
@pytest.mark.parametrize("normalisation", ["sum", "denominator"])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_recurrence_compiles_to_one_graph_and_equals_eager(
    rule: str, normalisation: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs, final state and the gradients of every leaf (raw q, k, v, β, W_0, z_0) with a carried
    initial state, T = 7 in chunks of 4 (padded). The reference backend runs ``fast_weight_step`` per
    step (the generation step), unrolled in the graph (T = 3: every step is traced)."""
    problem = make_problem(rule=rule, normalisation=normalisation, T=7 if backend == "chunk" else 3)
    eager = outputs_and_gradients(problem, backend=backend)
    monkeypatch.setattr(cases, "run", compiled(cases.run))
    assert_all_close(outputs_and_gradients(problem, backend=backend), eager, rel=1e-12)


@pytest.mark.parametrize("denominator", [False, True])
def test_bidirectional_memory_compiles_to_one_graph_and_equals_eager(denominator: bool) -> None:
    """``fast_weight_attention`` in bidirectional mode with a key padding mask, then in read mode on the
    memory it wrote: outputs and gradients."""
    g = torch.Generator().manual_seed(8)
    q, k = (torch.rand(2, 2, 5, D, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    v = torch.randn(2, 2, 5, D_V, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        normalization = Normalization(denominator=denominator)
        y, memory = fast_weight_attention(
            q, k, v, mode="bidirectional", normalization=normalization, key_padding_mask=mask
        )
        return y + fast_weight_attention(q, mode="read", normalization=normalization, state=memory)[0]

    results = []
    for function in (attend, compiled(attend)):
        y = function(q, k, v)
        results.append((y.detach(), torch.autograd.grad(y.square().sum(), (q, k, v))))
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)


def test_non_finite_check_fails_inside_a_compiled_graph() -> None:
    """``check_finite`` (FWP_DEBUG=1) counts non-finite values with a data-dependent branch in eager;
    compiled, the check is an assertion in the graph (no graph break) and still names the input."""
    q = torch.rand(1, 2, 5, 3, dtype=torch.float64)
    v = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    recurrence = compiled(lambda q, k, v: fast_weight_recurrence(q, k, v, check_finite=True)[0])
    torch.testing.assert_close(recurrence(q, q, v), fast_weight_recurrence(q, q, v)[0])
    k = q.clone()
    k[0, 1, 2, 0] = float("nan")
    with pytest.raises(RuntimeError, match="k has non-finite values"):
        recurrence(q, k, v)
