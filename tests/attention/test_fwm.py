"""Fast Weight Memory attention: its rescaling, parallel = step mode (float64), padding, errors. Its
parity with the official loop is in tests/parity/test_retrieval_parity.py."""

from __future__ import annotations

import pytest
import torch

from fwp.attention import build_attention
from fwp.attention.fwm import FastWeightMemoryAttention
from fwp.ops import FastWeightState

FWM_SPEC = {"class_path": "fwp.attention.fwm.FastWeightMemoryAttention", "init_args": {"feature_map": "tanh"}}


def inputs(B=3, T=9, d=6, d_v=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, 1, T, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, 1, T, d_v, generator=g, dtype=torch.float64)
    beta = torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    return q, k, v, beta


def test_the_first_write_is_not_rescaled_and_later_ones_are():
    """W_1 = β_1 φ(k_1)^T v_1 as written; from the second write on ‖W‖_F <= 1 (checked against the
    official loop in tests/parity/test_retrieval_parity.py)."""
    core = FastWeightMemoryAttention(6)
    q, k, v, beta = inputs()
    _, first = core(q[:, :, :1], 3 * k[:, :, :1], 4 * v[:, :, :1], beta[:, :, :1])
    phi = core.features(3 * k[:, :, 0])
    expected = phi.unsqueeze(-1) * (beta[:, :, 0, None] * 4 * v[:, :, 0]).unsqueeze(-2)
    torch.testing.assert_close(first.W, expected, rtol=1e-12, atol=1e-12)
    assert first.W.flatten(1).norm(dim=1).max() > 1
    _, later = core(q, 3 * k, 4 * v, beta)
    assert later.W.flatten(1).norm(dim=1).max() <= 1 + 1e-12


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
