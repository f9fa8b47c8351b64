"""Packed sequences through the backbones: ``DecoderLM`` and ``EncoderDecoder`` over ``N`` sequences laid
end to end (offsets ``cu_seqlens``) give, in float64, exactly what each sequence (pair) gives alone:
logits, every parameter's gradient and each sequence's final states; positions restart at every
sequence (sinusoidal and learned)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fwp.model import EncoderDecoderConfig
from fwp.model.encoder_decoder import EncoderDecoder
from fwp.ops import FastWeightState, cu_seqlens_from_lengths
from tests.model.model_cases import VOCAB, tiny_lm

LENGTHS = (4, 1, 7, 3)
TARGET_LENGTHS = (2, 5, 1, 6)
LM_PRESETS = ("softmax", "linear", "delta", "deltanet", "gated_deltanet")
SEQ2SEQ_TRIPLES = {
    # encoder, decoder self-attention, cross-attention
    "softmax": ("softmax", "softmax", "softmax"),
    "linear-delta-softmax": ("linear", "delta", "softmax"),
    "dpfp-deltanet-linear": ("dpfp", "deltanet", "linear"),
    "linear-gated_deltanet-softmax": ("linear", "gated_deltanet", "softmax"),
}


def random_tokens(lengths: tuple[int, ...]) -> list[Tensor]:
    """One ``[1, l]`` row of random token ids (none of them the padding id 0) per length."""
    return [torch.randint(1, VOCAB, (1, length)) for length in lengths]


def parameter_gradients(model: nn.Module, outputs: Tensor) -> list[Tensor | None]:
    """The gradients of a fixed random projection of ``outputs`` into every parameter."""
    weights = torch.randn(outputs.shape, dtype=outputs.dtype, generator=torch.Generator().manual_seed(1))
    return list(torch.autograd.grad((outputs * weights).sum(), list(model.parameters()), allow_unused=True))


def assert_all_close(actual: list[Tensor | None], expected: list[Tensor | None]) -> None:
    for a, e in zip(actual, expected, strict=True):
        if a is None or e is None:
            assert a is None and e is None
        else:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("attention", LM_PRESETS)
def test_packed_decoder_lm_equals_separate_sequences(attention: str, positional: str) -> None:
    """Catches positions that run on across sequences (they must restart at 0) and any layer that lets
    a sequence see the one before it; the states hold one row per sequence."""
    model = tiny_lm(attention, positional=positional, max_positions=8)
    rows = random_tokens(LENGTHS)
    logits, states = model(torch.cat(rows, dim=1), cu_seqlens=cu_seqlens_from_lengths(LENGTHS))
    separate = [model(row) for row in rows]
    expected = torch.cat([out for out, _ in separate], dim=1)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-11)
    assert_all_close(parameter_gradients(model, logits), parameter_gradients(model, expected))
    if attention != "softmax":
        for n, (_, alone) in enumerate(separate):
            for layer, layer_alone in zip(states, alone, strict=True):
                assert isinstance(layer, FastWeightState)
                assert_all_close([layer.W[n : n + 1]], [layer_alone.W])


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("triple", SEQ2SEQ_TRIPLES.values(), ids=SEQ2SEQ_TRIPLES.keys())
def test_packed_encoder_decoder_equals_separate_pairs(triple: tuple[str, str, str], positional: str) -> None:
    """Teacher-forced logits of packed pairs (sources and targets of other lengths) equal each pair
    alone, with every gradient: target ``n`` attends only to source ``n``."""
    encoder, decoder, cross = triple
    config = EncoderDecoderConfig(
        d_model=16,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
        d_ff=24,
        encoder_attention=encoder,
        decoder_attention=decoder,
        cross_attention=cross,
        positional=positional,
        max_positions=8,
    )
    model = EncoderDecoder(VOCAB, config).double().eval()
    sources, targets = random_tokens(LENGTHS), random_tokens(TARGET_LENGTHS)
    logits = model(
        torch.cat(sources, dim=1),
        None,
        torch.cat(targets, dim=1),
        src_cu_seqlens=cu_seqlens_from_lengths(LENGTHS),
        tgt_cu_seqlens=cu_seqlens_from_lengths(TARGET_LENGTHS),
    )
    expected = torch.cat([model(src, None, tgt) for src, tgt in zip(sources, targets, strict=True)], dim=1)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-11)
    assert_all_close(parameter_gradients(model, logits), parameter_gradients(model, expected))


def test_packed_pairs_need_both_offsets() -> None:
    model = EncoderDecoder(VOCAB, EncoderDecoderConfig(d_model=16, n_heads=2, d_ff=24))
    src, tgt = torch.cat(random_tokens(LENGTHS), dim=1), torch.cat(random_tokens(TARGET_LENGTHS), dim=1)
    with pytest.raises(ValueError, match="src_cu_seqlens"):
        model(src, None, tgt, src_cu_seqlens=cu_seqlens_from_lengths(LENGTHS))


def test_packed_positions_refuse_an_offset() -> None:
    model = tiny_lm("delta")
    with pytest.raises(ValueError, match="position_offset or positions"):
        model(
            torch.cat(random_tokens(LENGTHS), dim=1),
            cu_seqlens=cu_seqlens_from_lengths(LENGTHS),
            position_offset=3,
        )
