"""Non-causal attention against brute-force formulas, key padding, and cached cross-attention."""

from __future__ import annotations

import math

import pytest
import torch
from attention_cases import BIDIRECTIONAL_SPECS, build_mha, sequence
from torch import Tensor

from fwp.attention import FastWeightAttention, MultiHeadAttention, SoftmaxAttention, build_attention
from fwp.ops import FastWeightState, dpfp, elu_plus_one, favor

B, H, T, S, D = 2, 2, 5, 6, 4


def heads(length: int) -> Tensor:
    return torch.randn(B, H, length, D, dtype=torch.float64)


def padding_mask() -> Tensor:
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, -2:] = True
    mask[1, 0] = True
    return mask


def brute_force_features(core: FastWeightAttention, x: Tensor) -> Tensor:
    """φ written out from docs/design.md §1, independently of the core's own pipeline."""
    phi = {
        "identity": lambda: x,
        "elu": lambda: elu_plus_one(x),
        "dpfp": lambda: dpfp(x, core.nu),
        "favor": lambda: favor(x, core.phi.omega, core.feature_eps),
    }[core.feature_map]()
    if core.normalization == "sum":
        phi = phi / (phi.sum(-1, keepdim=True) + core.eps)
    return phi


def brute_force(core, q: Tensor, k: Tensor, v: Tensor, keep: Tensor) -> Tensor:
    """Every query against every kept key, one (query, key) score at a time in matrix form."""
    keep = keep[:, None, None, :]
    if isinstance(core, SoftmaxAttention):
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        weights = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
        return weights @ v
    scores = (brute_force_features(core, q) @ brute_force_features(core, k).transpose(-1, -2)) * keep
    y = scores @ v
    if core.normalization == "denominator":
        y = y / (scores.sum(-1, keepdim=True) + core.eps)
    return y


@pytest.mark.parametrize("spec", BIDIRECTIONAL_SPECS.values(), ids=BIDIRECTIONAL_SPECS.keys())
def test_bidirectional_core_matches_brute_force(spec: dict) -> None:
    core = build_attention(spec, d_head=D).double().eval()
    q, k, v = heads(T), heads(S), heads(S)
    mask = padding_mask()
    y, state = core(q, k, v, causal=False, key_padding_mask=mask)
    torch.testing.assert_close(y, brute_force(core, q, k, v, ~mask), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(core.read(q, state), y, rtol=1e-10, atol=1e-12)
    unmasked, _ = core(q, k, v, causal=False)
    torch.testing.assert_close(unmasked, brute_force(core, q, k, v, torch.ones(B, S, dtype=torch.bool)))


@pytest.mark.parametrize("spec", BIDIRECTIONAL_SPECS.values(), ids=BIDIRECTIONAL_SPECS.keys())
def test_bidirectional_call_with_a_state_adds_its_keys_to_the_memory(spec: dict) -> None:
    core = build_attention(spec, d_head=D).double().eval()
    q, k, v, k_more, v_more = heads(T), heads(S), heads(S), heads(3), heads(3)
    mask = padding_mask()
    _, state = core(q, k, v, causal=False, key_padding_mask=mask)
    y, _ = core(q, k_more, v_more, causal=False, state=state)
    keep = torch.cat([~mask, torch.ones(B, 3, dtype=torch.bool)], dim=1)
    expected = brute_force(core, q, torch.cat([k, k_more], dim=2), torch.cat([v, v_more], dim=2), keep)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", BIDIRECTIONAL_SPECS.values(), ids=BIDIRECTIONAL_SPECS.keys())
def test_padded_keys_are_irrelevant_in_bidirectional_self_attention(spec: dict) -> None:
    mha = build_mha(spec, causal=False)
    x = sequence(batch=B, length=S)
    mask = padding_mask()
    y, _ = mha(x, key_padding_mask=mask)
    x_changed = torch.where(mask[..., None], 50.0 * torch.randn_like(x), x)
    y_changed, _ = mha(x_changed, key_padding_mask=mask)
    torch.testing.assert_close(y_changed[~mask], y[~mask], rtol=1e-10, atol=1e-12)
    unmasked, _ = mha(x_changed)
    assert not torch.allclose(unmasked[~mask], y[~mask])


def test_delta_rule_refuses_bidirectional() -> None:
    with pytest.raises(ValueError, match="causal=False"):
        MultiHeadAttention(16, 2, "delta", causal=False)
    with pytest.raises(ValueError, match="cross-attention"):
        MultiHeadAttention(16, 2, "delta", cross=True)
    core = build_attention("delta", d_head=D)
    with pytest.raises(
        ValueError, match=r"causal=False\) needs a rule whose memory .*\(sum\), got rule='delta'"
    ):
        core(heads(T), heads(T), heads(T), torch.rand(B, H, T), causal=False)


@pytest.mark.parametrize("spec", BIDIRECTIONAL_SPECS.values(), ids=BIDIRECTIONAL_SPECS.keys())
def test_cross_attention_steps_reuse_the_memory_state(spec: dict) -> None:
    """Decoding one target token at a time from the returned state equals attending to the memory
    anew at every step, and equals one parallel call."""
    mha = build_mha(spec, cross=True)
    memory, x = sequence(batch=B, length=S), sequence(batch=B, length=T)
    mask = padding_mask()
    parallel, state = mha(x, memory=memory, key_padding_mask=mask)
    for t in range(T):
        fresh, _ = mha(x[:, t : t + 1], memory=memory, key_padding_mask=mask)
        cached, same_state = mha(x[:, t : t + 1], state=state)
        assert same_state is state
        torch.testing.assert_close(cached, fresh, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cached, parallel[:, t : t + 1], rtol=1e-10, atol=1e-12)


def test_cross_attention_input_errors() -> None:
    mha = build_mha("linear", cross=True)
    with pytest.raises(ValueError, match="needs memory"):
        mha(sequence())
    with pytest.raises(ValueError, match="memory must be"):
        mha(sequence(), memory=torch.randn(2, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(sequence(), memory=sequence(length=3), key_padding_mask=torch.zeros(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="only used by cross-attention"):
        build_mha("linear")(sequence(), memory=sequence())


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_bidirectional_memory_and_read_stay_float32_under_autocast(autocast_dtype: torch.dtype) -> None:
    """The order-free memory and every ``read`` are computed in float32 with autocast off, like the
    recurrences: under autocast they agree with float64 to float32 rounding, not to bf16/fp16's."""
    core = FastWeightAttention(8, feature_map="elu", normalization="denominator", rule="sum")
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=autocast_dtype):
        y, memory = core(q, k, v, causal=False)
        read = core.read(q, memory)
    y64, memory64 = core.double()(q.double(), k.double(), v.double(), causal=False)
    assert memory.W.dtype == torch.float32 and read.dtype == torch.float32
    for actual, expected in ((y, y64), (memory.W, memory64.W), (read, y64)):
        assert (actual.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_state_of_another_layer_is_refused_by_read_and_bidirectional_calls() -> None:
    core = FastWeightAttention(4, feature_map="elu", normalization="denominator", rule="sum")
    q = torch.randn(1, 2, 3, 4)
    without_z = FastWeightState(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"state\.z must be \[B, H, d_dot\]"):
        core.read(q, without_z)
    with pytest.raises(ValueError, match=r"state\.z must be \[B, H, d_dot\]"):
        core(q, q, q, causal=False, state=without_z)
    with pytest.raises(ValueError, match=r"state\.W must be \[B, H, d_dot, d_v\]"):
        core.read(q, FastWeightState(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5)))
