"""``denominator_write``: the delta rule kept alongside the Katharopoulos denominator, its write
normalised by ``s_t = z_{t-1}·φ(k_t)`` as in the official LM layers 44–46 (``s_1 := 1`` at a fresh start;
key ``φ(k)/(s + ε)``, strength ``β s``), against a plain loop over time (float64)."""

from __future__ import annotations

import pytest
import torch

from fwp.attention import FastWeightAttention
from fwp.ops import FastWeightState, elu_plus_one


def loop_over_time(q, k, v, beta, W, z, eps, fresh):
    """``k'_t = φ(k_t)/(s_t + ε)``, ``W_t = W_{t-1} + β_t s_t k'_tᵀ (v_t − k'_t W_{t-1})``,
    ``z_t = z_{t-1} + φ(k_t)``, ``y_t = φ(q_t) W_t / (φ(q_t)·z_t + ε)`` with ``s_t = z_{t-1}·φ(k_t)``
    (``s_1 = 1`` when ``fresh``), one step at a time."""
    outputs = []
    for t in range(q.shape[2]):
        phi_q, phi_k = elu_plus_one(q[:, :, t]), elu_plus_one(k[:, :, t])
        scale = (z * phi_k).sum(-1, keepdim=True)
        if fresh and t == 0:
            scale = torch.ones_like(scale)
        key = phi_k / (scale + eps)
        retrieved = torch.einsum("bhd,bhdv->bhv", key, W)
        write = beta[:, :, t, None] * scale * (v[:, :, t] - retrieved)
        W = W + key.unsqueeze(-1) * write.unsqueeze(-2)
        z = z + phi_k
        y = torch.einsum("bhd,bhdv->bhv", phi_q, W) / ((phi_q * z).sum(-1, keepdim=True) + eps)
        outputs.append(y)
    return torch.stack(outputs, dim=2), W, z


@pytest.mark.parametrize("backend", ["reference", "chunk"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "carried"])
def test_denominator_write_is_the_rescaled_delta_rule(backend: str, with_state: bool) -> None:
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 3, 11, 4

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = rand(B, H, T, d), rand(B, H, T, d), rand(B, H, T, d)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    W0, z0 = torch.zeros(B, H, d, d, dtype=torch.float64), torch.zeros(B, H, d, dtype=torch.float64)
    if with_state:
        W0, z0 = 0.3 * rand(B, H, d, d), rand(B, H, d).abs()
    core = FastWeightAttention(
        d,
        feature_map="elu",
        normalization="denominator",
        rule="delta",
        denominator_write=True,
        backend=backend,
        chunk_size=4,
    )
    y, state = core(q, k, v, beta, state=FastWeightState(W0, z0) if with_state else None)
    y_loop, W_loop, z_loop = loop_over_time(q, k, v, beta, W0, z0, core.eps, fresh=not with_state)
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.W, W_loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.z, z_loop, rtol=1e-10, atol=1e-12)


def test_denominator_write_differs_from_the_plain_delta_rule() -> None:
    """The flag changes what is stored (the test above would also pass for a no-op if s_t were 1)."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 1, 6, 4, dtype=torch.float64) for _ in range(3))
    beta = torch.rand(1, 1, 6, dtype=torch.float64)
    options = {"feature_map": "elu", "normalization": "denominator", "rule": "delta"}
    _, plain = FastWeightAttention(4, **options)(q, k, v, beta)
    _, rescaled = FastWeightAttention(4, **options, denominator_write=True)(q, k, v, beta)
    assert (plain.W - rescaled.W).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("rule", "normalization"), [("sum", "denominator"), ("delta", "sum"), ("delta", "none")]
)
def test_denominator_write_needs_the_delta_rule_and_the_denominator(rule: str, normalization: str) -> None:
    with pytest.raises(ValueError, match=rf"denominator_write=True needs .*rule={rule!r}"):
        FastWeightAttention(4, rule=rule, normalization=normalization, denominator_write=True)
