"""Property tests of the chunk backend over random shapes, chunk sizes and edge cases (float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fwp.ops import FastWeightState, dpfp, fast_weight_recurrence, sum_normalize

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
EXACT = 1e-10


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = EXACT) -> None:
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= rel * scale


@PROPERTY_SETTINGS
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    T=st.integers(1, 40),
    chunk_size=st.integers(1, 24),
    d=st.integers(1, 5),
    d_v=st.integers(1, 4),
    rule=st.sampled_from(["sum", "delta"]),
    denominator=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunk_matches_reference_for_random_shapes(
    B: int, H: int, T: int, chunk_size: int, d: int, d_v: int, rule: str, denominator: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = _rand(g, B, H, T, d), _rand(g, B, H, T, d) / d
    v = torch.randn(B, H, T, d_v, generator=g, dtype=torch.float64)
    beta = _rand(g, B, H, T) if rule == "delta" else None
    state = FastWeightState(_rand(g, B, H, d, d_v), _rand(g, B, H, d) if denominator else None)
    options = {"rule": rule, "denominator": denominator, "initial_state": state}
    y, final = fast_weight_recurrence(q, k, v, beta, backend="chunk", chunk_size=chunk_size, **options)
    y_ref, final_ref = fast_weight_recurrence(q, k, v, beta, backend="reference", **options)
    _assert_close(y, y_ref)
    _assert_close(final.W, final_ref.W)
    if denominator:
        _assert_close(final.z, final_ref.z)


@PROPERTY_SETTINGS
@given(
    T=st.integers(1, 30),
    chunk_size=st.integers(1, 16),
    rule=st.sampled_from(["sum", "delta"]),
    nu=st.integers(1, 3),
    zero_fraction=st.sampled_from([0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_zero_keys_with_sum_normalisation_write_nothing(
    T: int, chunk_size: int, rule: str, nu: int, zero_fraction: float, seed: int
) -> None:
    """``dpfp(0) = 0`` and ``0 / (0 + ε) = 0``: zero keys give finite outputs and gradients, and
    when every key is zero the memory stays ``W_0``."""
    g = torch.Generator().manual_seed(seed)
    B, H, d_k, d_v = 1, 2, 3, 2
    raw_k = torch.randn(B, H, T, d_k, generator=g, dtype=torch.float64)
    raw_k = raw_k * (_rand(g, B, H, T, 1) >= zero_fraction)
    raw_k.requires_grad_()
    raw_q = torch.randn(B, H, T, d_k, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, H, T, d_v, generator=g, dtype=torch.float64, requires_grad=True)
    beta = _rand(g, B, H, T) if rule == "delta" else None
    W0 = _rand(g, B, H, 2 * d_k * nu, d_v)
    q, k = (sum_normalize(dpfp(x, nu), 1e-6) for x in (raw_q, raw_k))
    y, final = fast_weight_recurrence(
        q, k, v, beta, rule=rule, initial_state=FastWeightState(W0), backend="chunk", chunk_size=chunk_size
    )
    (y.sum() + final.W.sum()).backward()
    assert all(torch.isfinite(x).all() for x in (y, final.W, raw_q.grad, raw_k.grad, v.grad))
    if zero_fraction == 1.0:
        torch.testing.assert_close(final.W, W0, rtol=0, atol=0)
        _assert_close(y, q @ W0)


@PROPERTY_SETTINGS
@given(T=st.integers(1, 30), chunk_size=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_delta_rule_with_zero_beta_keeps_the_memory(T: int, chunk_size: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, H, d, d_v = 2, 1, 4, 3
    q, k, v = _rand(g, B, H, T, d), _rand(g, B, H, T, d), _rand(g, B, H, T, d_v)
    W0 = torch.randn(B, H, d, d_v, generator=g, dtype=torch.float64)
    beta = torch.zeros(B, H, T, dtype=torch.float64)
    y, final = fast_weight_recurrence(
        q, k, v, beta, rule="delta", initial_state=FastWeightState(W0), backend="chunk", chunk_size=chunk_size
    )
    _assert_close(final.W, W0)
    _assert_close(y, q @ W0)


@PROPERTY_SETTINGS
@given(
    prefix=st.integers(0, 20), chunk_size=st.integers(1, 16), d=st.integers(1, 6), seed=st.integers(0, 2**16)
)
def test_delta_rule_with_unit_beta_overwrites_a_normalised_key(
    prefix: int, chunk_size: int, d: int, seed: int
) -> None:
    """After ``prefix`` random writes, write ``(k, v₁)`` then ``(k, v₂)`` with ``β = 1`` and ``‖k‖ = 1``:
    reading ``k`` returns ``v₂`` exactly."""
    g = torch.Generator().manual_seed(seed)
    B, H, d_v, T = 1, 2, 3, prefix + 2
    k = F.normalize(torch.randn(B, H, T, d, generator=g, dtype=torch.float64), dim=-1)
    k[:, :, -1] = k[:, :, -2]
    q = k.clone()
    v = torch.randn(B, H, T, d_v, generator=g, dtype=torch.float64)
    beta = _rand(g, B, H, T)
    beta[:, :, -2:] = 1.0
    W0 = torch.randn(B, H, d, d_v, generator=g, dtype=torch.float64)
    y, final = fast_weight_recurrence(
        q, k, v, beta, rule="delta", initial_state=FastWeightState(W0), backend="chunk", chunk_size=chunk_size
    )
    _assert_close(y[:, :, -1], v[:, :, -1], rel=1e-9)
    _assert_close(y[:, :, -2], v[:, :, -2], rel=1e-9)
    _assert_close((k[:, :, -1].unsqueeze(-2) @ final.W).squeeze(-2), v[:, :, -1], rel=1e-9)


@PROPERTY_SETTINGS
@given(
    T=st.integers(1, 12),
    chunk_size=st.integers(1, 5),
    rule=st.sampled_from(["sum", "delta"]),
    seed=st.integers(0, 99),
)
def test_one_dimensional_keys_and_values_get_exact_gradients(
    T: int, chunk_size: int, rule: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    leaves = [_rand(g, 1, 1, T, 1).requires_grad_() for _ in range(3)]
    beta = _rand(g, 1, 1, T).requires_grad_() if rule == "delta" else None
    W0 = _rand(g, 1, 1, 1, 1).requires_grad_()
    inputs = [*leaves, W0] + ([beta] if beta is not None else [])
    grads = {}
    for backend in ("chunk", "reference"):
        y, final = fast_weight_recurrence(
            *leaves,
            beta,
            rule=rule,
            initial_state=FastWeightState(W0),
            backend=backend,
            chunk_size=chunk_size,
        )
        grads[backend] = torch.autograd.grad((y * y).sum() + final.W.sum(), inputs)
    for chunk_grad, reference_grad in zip(grads["chunk"], grads["reference"], strict=True):
        _assert_close(chunk_grad, reference_grad)
