"""Parallel, step-by-step, segment-carry and prefill modes of every attention agree (float64, eval)."""

from __future__ import annotations

import pytest
import torch
from attention_cases import (
    ALL_SPECS,
    BIDIRECTIONAL_SPECS,
    D_MODEL,
    FAST_WEIGHT_SPECS,
    FWM_SPECS,
    N_HEADS,
    assert_states_close,
    build_mha,
    sequence,
)

from fwp.attention import MultiHeadAttention, available_attentions, build_attention
from fwp.ops import MODES

SEGMENTATIONS = {"steps": (1,) * 7, "carry": (4, 3), "prefill+steps": (4, 1, 1, 1)}


def test_every_preset_is_covered() -> None:
    names = {spec["name"] for spec in ALL_SPECS.values()}
    assert names == set(available_attentions())
    assert set(FAST_WEIGHT_SPECS) | set(FWM_SPECS) >= set(available_attentions()) - {"softmax"}
    bidirectional = {spec["name"] for spec in BIDIRECTIONAL_SPECS.values()}
    for name in available_attentions():
        if "bidirectional" not in build_attention(name, d_head=4).refused_modes:
            assert name in bidirectional, name


@pytest.mark.parametrize("spec", ALL_SPECS.values(), ids=ALL_SPECS.keys())
def test_every_mode_runs_or_is_refused_with_its_reason(spec: dict) -> None:
    """A core declares the modes it cannot run (``refused_modes``, each with a reason); asking for one
    fails with that reason, at construction (``MultiHeadAttention``) and at the call (the core); every
    other mode runs. The registry-wide parallel/step/padding tests cover the causal mode of all."""
    core = build_mha(spec).core
    assert set(core.refused_modes) <= set(MODES) and all(core.refused_modes.values())
    assert "causal" not in core.refused_modes
    x = sequence(length=4)
    for options in ({"causal": False}, {"cross": True}):
        refused = (
            {"bidirectional", "read"} & set(core.refused_modes)
            if options.get("cross")
            else ({"bidirectional"} & set(core.refused_modes))
        )
        if refused:
            (mode,) = refused
            with pytest.raises(ValueError, match=rf"needs the {mode} mode, .*: {core.refused_modes[mode]}"):
                MultiHeadAttention(D_MODEL, N_HEADS, spec, **options)
            continue
        mha = build_mha(spec, **options)
        y, _ = mha(x, memory=x) if options.get("cross") else mha(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    if "bidirectional" in core.refused_modes:
        q = torch.randn(2, N_HEADS, 4, core.d_head, dtype=torch.float64)
        beta = torch.rand(2, N_HEADS, 4, dtype=torch.float64) if core.uses_beta else None
        with pytest.raises(ValueError, match="causal=False"):
            core(q, q, q, beta, causal=False)


@pytest.mark.parametrize("segments", SEGMENTATIONS.values(), ids=SEGMENTATIONS.keys())
@pytest.mark.parametrize("spec", ALL_SPECS.values(), ids=ALL_SPECS.keys())
def test_segments_with_carried_state_equal_one_parallel_call(spec: dict, segments: tuple[int, ...]) -> None:
    mha = build_mha(spec)
    x = sequence(length=sum(segments))
    expected, expected_state = mha(x)
    outputs, state, start = [], None, 0
    for length in segments:
        y, state = mha(x[:, start : start + length], state=state)
        state = state.detach()
        outputs.append(y)
        start += length
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-10, atol=1e-12)
    assert_states_close(state, expected_state)


@pytest.mark.parametrize("spec", ALL_SPECS.values(), ids=ALL_SPECS.keys())
def test_causal_padding_equals_the_unpadded_sequence(spec: dict) -> None:
    """Left padding writes nothing: the real positions see exactly what the unpadded sequence sees,
    whatever the padded inputs are; padded queries, which see no key, output zeros."""
    mha = build_mha(spec)
    pad = 3
    x = sequence(batch=2, length=8)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :pad] = True
    y, _ = mha(x, key_padding_mask=mask)
    alone, _ = mha(x[:1, pad:])
    torch.testing.assert_close(y[:1, pad:], alone, rtol=1e-10, atol=1e-12)
    x_changed = x.clone()
    x_changed[0, :pad] = 100.0 * torch.randn(pad, x.shape[-1], dtype=x.dtype)
    y_changed, _ = mha(x_changed, key_padding_mask=mask)
    torch.testing.assert_close(y_changed[:, pad:], y[:, pad:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y_changed[1], y[1], rtol=0, atol=0)
    torch.testing.assert_close(y[0, :pad], torch.zeros_like(y[0, :pad]), rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["softmax", "delta", "linear"])
def test_cache_remembers_padding_of_the_prefill(spec: str) -> None:
    """Steps after a padded prefill, without a mask, still ignore the padded prompt positions."""
    mha = build_mha(spec)
    x = sequence(batch=1, length=6)
    mask = torch.tensor([[True, True, False, False]])
    _, state = mha(x[:, :4], key_padding_mask=mask)
    step, _ = mha(x[:, 4:5], state=state)
    _, unpadded_state = mha(x[:, 2:4])
    expected, _ = mha(x[:, 4:5], state=unpadded_state)
    torch.testing.assert_close(step, expected, rtol=1e-10, atol=1e-12)


def test_output_dtype_follows_the_input_under_autocast() -> None:
    for spec in (
        "softmax",
        {"name": "delta", "backend": "reference"},
        {"name": "performer", "backend": "reference"},
    ):
        mha = MultiHeadAttention(16, 2, spec).eval()
        x = torch.randn(2, 5, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = mha(x)
        assert y.dtype == torch.bfloat16
        assert torch.isfinite(y.float()).all()
        if hasattr(state, "W"):
            assert state.W.dtype == torch.float32
