"""Fast Weight Memory attention against a loop over time written from the official equations
(float64), parallel = step mode, padding, and its errors."""

from __future__ import annotations

import pytest
import torch

from fwp.attention import build_attention
from fwp.attention.fwm import FastWeightMemoryAttention
from fwp.ops import FastWeightState

FWM_SPEC = {"class_path": "fwp.attention.fwm.FastWeightMemoryAttention", "init_args": {"feature_map": "tanh"}}


def official_fwm(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The official synthetic code's FWM loop, one head: k ``[B, T, p]`` (features), v ``[B, T, d_v]``,
    beta ``[B, T, 1]`` → W ``[B, d_v, p]`` (its layout)."""
    W = torch.einsum("bv,bk->bvk", v[:, 0], k[:, 0] * beta[:, 0])
    for i in range(1, k.shape[1]):
        old_v = torch.einsum("bvk,bk->bv", W, k[:, i])
        W = W - torch.einsum("bv,bk->bvk", old_v, k[:, i])
        new_v = beta[:, i] * v[:, i] + (1.0 - beta[:, i]) * old_v
        W = W + torch.einsum("bv,bk->bvk", new_v, k[:, i])
        scale = torch.relu(W.reshape(W.shape[0], -1).norm(dim=-1) - 1) + 1
        W = W / scale.reshape(-1, 1, 1)
    return W


def official_read(W: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    y = torch.einsum("bvp,blp->blv", W, q)
    return torch.nn.functional.layer_norm(y, [W.shape[1]])


def inputs(B=3, T=9, d=6, d_v=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, 1, T, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, 1, T, d_v, generator=g, dtype=torch.float64)
    beta = torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    return q, k, v, beta


@pytest.mark.parametrize("feature_map", ["tanh", "dpfp"])
def test_state_and_outputs_equal_the_official_loop(feature_map):
    core = build_attention({**FWM_SPEC, "init_args": {"feature_map": feature_map}}, 6)
    q, k, v, beta = inputs()
    # large values so that the Frobenius rescaling is active
    y, state = core(q, 3 * k, 4 * v, beta)
    phi_k, phi_q = core.features(3 * k)[:, 0], core.features(q)[:, 0]
    for t in range(q.shape[2]):
        W = official_fwm(phi_k[:, : t + 1], 4 * v[:, 0, : t + 1], beta[:, 0, : t + 1, None])
        torch.testing.assert_close(
            y[:, 0, t], official_read(W, phi_q[:, t : t + 1])[:, 0], rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(state.W[:, 0], W.transpose(1, 2), rtol=1e-12, atol=1e-12)
    assert W.flatten(1).norm(dim=1).max() == pytest.approx(1.0)  # the rescaling was exercised
    torch.testing.assert_close(core.read(q[:, :, -1:], state), y[:, :, -1:], rtol=1e-12, atol=1e-12)


def test_step_mode_equals_the_parallel_call():
    core = FastWeightMemoryAttention(6)
    q, k, v, beta = inputs()
    expected, expected_state = core(q, k, v, beta)
    outputs, state = [], None
    for t in range(q.shape[2]):
        s = slice(t, t + 1)
        y, state = core(q[:, :, s], k[:, :, s], v[:, :, s], beta[:, :, s], state=state)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.W, expected_state.W, rtol=1e-12, atol=1e-12)


def test_padded_keys_write_nothing():
    core = FastWeightMemoryAttention(6)
    q, k, v, beta = inputs()
    pad = torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool)
    pad[:, 4] = True
    _, state = core(q, k, v, beta, key_padding_mask=pad)
    keep = [t for t in range(q.shape[2]) if t != 4]
    _, unpadded = core(q[:, :, keep], k[:, :, keep], v[:, :, keep], beta[:, :, keep])
    torch.testing.assert_close(state.W, unpadded.W, rtol=1e-12, atol=1e-12)


def test_errors_name_the_problem():
    core = FastWeightMemoryAttention(6)
    q, k, v, beta = inputs()
    with pytest.raises(ValueError, match="beta"):
        core(q, k, v)
    with pytest.raises(ValueError, match="causal"):
        core(q, k, v, beta, causal=False)
    with pytest.raises(ValueError, match=r"state\.W"):
        core(q, k, v, beta, state=FastWeightState(torch.zeros(1, 1, 2, 2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="feature_map"):
        build_attention({**FWM_SPEC, "init_args": {"feature_map": "elu"}}, 6)
