"""The reference recurrence (the oracle of every backend) against independent closed forms."""

from __future__ import annotations

import torch

from fwp.ops import FastWeightState, fast_weight_recurrence, fast_weight_step

B, H, T, D, D_V = 2, 3, 9, 4, 5


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, D_V, generator=g, dtype=torch.float64)
    W0 = torch.randn(B, H, D, D_V, generator=g, dtype=torch.float64)
    z0 = torch.rand(B, H, D, generator=g, dtype=torch.float64)
    return q, k, v, W0, z0


def test_sum_rule_is_causal_linear_attention() -> None:
    q, k, v, W0, _ = _inputs()
    y, state = fast_weight_recurrence(q, k, v, initial_state=FastWeightState(W0), backend="reference")
    expected = torch.tril(q @ k.transpose(-1, -2)) @ v + q @ W0
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.W, W0 + k.transpose(-1, -2) @ v, rtol=1e-12, atol=1e-12)


def test_denominator_is_row_normalised_attention() -> None:
    q, k, v, _, z0 = _inputs(1)
    eps = 1e-6
    W0 = torch.zeros(B, H, D, D_V, dtype=torch.float64)
    y, state = fast_weight_recurrence(
        q, k, v, denominator=True, eps=eps, initial_state=FastWeightState(W0, z0), backend="reference"
    )
    scores = torch.tril(q @ k.transpose(-1, -2))
    row_sums = scores.sum(-1, keepdim=True) + (q @ z0.unsqueeze(-1))
    torch.testing.assert_close(y, (scores @ v) / (row_sums + eps), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.z, z0 + k.sum(dim=2), rtol=1e-12, atol=1e-12)


def test_delta_step_replaces_the_retrieved_value() -> None:
    """One delta step: ``W_1 = W_0 + β kᵀ (v − k W_0)``, ``y = q W_1``."""
    q, k, v, W0, _ = _inputs(2)
    beta = torch.rand(B, H, dtype=torch.float64)
    q1, k1, v1 = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    y, state = fast_weight_step(
        q1, k1, v1, beta, FastWeightState(W0), rule="delta", denominator=False, eps=0.0
    )
    retrieved = (k1.unsqueeze(-1) * W0).sum(dim=-2)
    W1 = W0 + k1.unsqueeze(-1) * (beta.unsqueeze(-1) * (v1 - retrieved)).unsqueeze(-2)
    torch.testing.assert_close(state.W, W1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, (q1.unsqueeze(-1) * W1).sum(dim=-2), rtol=1e-12, atol=1e-12)


def test_delta_rule_with_orthonormal_keys_and_full_strength_stores_each_value() -> None:
    """With orthonormal keys and ``β = 1`` every write replaces exactly its own slot:
    ``W_T = W_0 + Σ_j k_jᵀ (v_j − k_j W_0)``."""
    _, _, v, W0, _ = _inputs(3)
    keys = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))[0][:, : min(D, T)].T
    steps = keys.shape[0]
    k = keys.expand(B, H, steps, D)
    v = v[:, :, :steps]
    beta = torch.ones(B, H, steps, dtype=torch.float64)
    _, state = fast_weight_recurrence(
        k, k, v, beta, rule="delta", initial_state=FastWeightState(W0), backend="reference"
    )
    expected = W0 + k.transpose(-1, -2) @ (v - k @ W0)
    torch.testing.assert_close(state.W, expected, rtol=1e-12, atol=1e-12)
