"""Projections (β unit layout), output scaling, dropout and state reordering of MultiHeadAttention."""

from __future__ import annotations

import math

import pytest
import torch
from attention_cases import D_MODEL, N_HEADS, build_mha, sequence, state_tensors

from fwp.attention import FastWeightAttention, MultiHeadAttention, SoftmaxAttention, build_attention


def capture_core_inputs(mha: MultiHeadAttention) -> list[tuple]:
    calls = []
    mha.core.register_forward_pre_hook(lambda module, args: calls.append(args))
    return calls


def test_delta_beta_comes_from_one_extra_unit_per_head() -> None:
    mha = build_mha({"name": "delta", "backend": "reference"})
    d_head = D_MODEL // N_HEADS
    assert tuple(mha.qkv_proj.weight.shape) == (N_HEADS * (3 * d_head + 1), D_MODEL)
    assert mha.qkv_proj.bias is None and mha.out_proj.bias is None
    calls = capture_core_inputs(mha)
    x = sequence(length=6)
    mha(x)
    q, _, _, beta = calls[0]
    assert tuple(beta.shape) == (2, N_HEADS, 6)
    assert ((beta > 0) & (beta < 1)).all()
    beta_rows = [h * (3 * d_head + 1) + 3 * d_head for h in range(N_HEADS)]
    expected = torch.sigmoid(x @ mha.qkv_proj.weight[beta_rows].T).transpose(1, 2)
    torch.testing.assert_close(beta, expected, rtol=1e-12, atol=0)
    q_rows = [h * (3 * d_head + 1) + i for h in range(N_HEADS) for i in range(d_head)]
    expected_q = (x @ mha.qkv_proj.weight[q_rows].T).view(2, 6, N_HEADS, d_head).transpose(1, 2)
    torch.testing.assert_close(q, expected_q, rtol=1e-12, atol=0)


def test_gradient_reaches_the_beta_unit() -> None:
    mha = build_mha({"name": "delta", "backend": "reference"})
    d_head = D_MODEL // N_HEADS
    y, _ = mha(sequence(length=6))
    (y * torch.randn_like(y)).sum().backward()
    grad = mha.qkv_proj.weight.grad
    for h in range(N_HEADS):
        assert grad[h * (3 * d_head + 1) + 3 * d_head].abs().sum() > 0


def test_sum_rule_and_softmax_projections_have_no_beta_unit() -> None:
    for spec in ("softmax", "linear"):
        mha = build_mha(spec)
        assert tuple(mha.qkv_proj.weight.shape) == (3 * D_MODEL, D_MODEL)
        calls = capture_core_inputs(mha)
        mha(sequence())
        assert calls[0][3] is None


@pytest.mark.parametrize("spec", ["softmax", "linear"])
def test_output_is_the_scaled_core_output_projected(spec: str) -> None:
    """Fast-weight outputs are scaled by 1/√d_head before the output projection; softmax's are not."""
    mha = build_mha(spec)
    outputs = []
    mha.core.register_forward_hook(lambda module, args, output: outputs.append(output[0]))
    x = sequence()
    y, _ = mha(x)
    scale = 1 / math.sqrt(D_MODEL // N_HEADS) if spec == "linear" else 1.0
    merged = outputs[0].transpose(1, 2).reshape(*x.shape[:2], -1)
    torch.testing.assert_close(y, scale * merged @ mha.out_proj.weight.T, rtol=1e-12, atol=1e-14)


def test_attention_dropout_only_in_training() -> None:
    with_dropout = build_mha({"name": "softmax", "dropout": 0.5})
    without = build_mha("softmax")
    without.load_state_dict(with_dropout.state_dict())
    x = sequence()
    torch.testing.assert_close(with_dropout(x)[0], without(x)[0], rtol=0, atol=0)
    with_dropout.train()
    assert not torch.allclose(with_dropout(x)[0], without(x)[0])


def test_d_head_and_shape_checks() -> None:
    mha = MultiHeadAttention(12, 3, "delta", d_head=5)
    assert mha.core.d_head == 5 and tuple(mha.out_proj.weight.shape) == (12, 15)
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"x must be \[B, T, d_model=16\]"):
        build_mha("softmax")(torch.randn(2, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="key_padding_mask"):
        build_mha("softmax")(sequence(), key_padding_mask=torch.zeros(2, 7))


def test_delta_core_needs_beta() -> None:
    core = build_attention("delta", d_head=4)
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="beta is required by rule='delta'"):
        core(q, q, q)


@pytest.mark.parametrize("spec", ["softmax", "linear", {"name": "delta", "backend": "reference"}])
def test_index_select_reorders_the_batch_of_a_state(spec) -> None:
    """Beam search: continuing a reordered state equals reordering the continued batch."""
    mha = build_mha(spec)
    x = sequence(batch=3, length=5)
    _, state = mha(x[:, :4])
    index = torch.tensor([2, 0, 0, 1])
    reordered = state.index_select(index)
    assert all(t.shape[0] == 4 for t in state_tensors(reordered))
    y, _ = mha(x[index, 4:], state=reordered)
    expected, _ = mha(x[:, 4:], state=state)
    torch.testing.assert_close(y, expected[index], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", ["softmax", "linear", "delta"])
def test_detach_cuts_the_graph(spec: str) -> None:
    mha = MultiHeadAttention(D_MODEL, N_HEADS, spec)
    _, state = mha(torch.randn(2, 4, D_MODEL))
    assert all(t.requires_grad for t in state_tensors(state))
    assert not any(t.requires_grad for t in state_tensors(state.detach()))


@pytest.mark.parametrize("spec", ["delta", "linear", "performer"])
def test_read_after_a_causal_sequence_is_the_last_output(spec: str) -> None:
    """``y_T = φ(q_T) W_T``: reading the final memory with the last query repeats the last output."""
    core = build_attention({"name": spec, "backend": "reference"}, d_head=4).double().eval()
    assert isinstance(core, FastWeightAttention)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    y, state = core(q, k, v, torch.rand(2, 2, 5, dtype=torch.float64) if core.uses_beta else None)
    torch.testing.assert_close(core.read(q[:, :, -1:], state), y[:, :, -1:], rtol=1e-10, atol=1e-12)


def test_softmax_read_attends_over_the_cache_without_adding() -> None:
    core = SoftmaxAttention(4).double()
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    y, cache = core(q, k, v)
    torch.testing.assert_close(core.read(q[:, :, -1:], cache), y[:, :, -1:], rtol=1e-12, atol=1e-14)
    assert cache.k.shape[2] == 5
