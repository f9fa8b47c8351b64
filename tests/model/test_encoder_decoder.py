"""EncoderDecoder: step-mode decoding == parallel decoding, padding invariance, state reordering."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fwp.model import CrossBlockState, EncoderDecoder, EncoderDecoderConfig, reorder_states
from tests.model.model_cases import VOCAB, tokens

ATTENTION_TRIPLES = {
    # encoder, decoder self-attention, cross-attention
    "softmax": ("softmax", "softmax", "softmax"),
    "linear": ("linear", "linear", "linear"),
    "delta-decoder": ("softmax", "delta", "softmax"),
    "fast-weights-everywhere": ("dpfp", "delta", "performer"),
}


def tiny_seq2seq(triple: tuple[str, str, str], **kwargs) -> EncoderDecoder:
    encoder, decoder, cross = triple
    options = {"d_model": 16, "n_encoder_layers": 2, "n_decoder_layers": 2, "n_heads": 2, "d_ff": 24} | kwargs
    model = EncoderDecoder(
        VOCAB,
        EncoderDecoderConfig(
            encoder_attention=encoder, decoder_attention=decoder, cross_attention=cross, **options
        ),
    )
    return model.double().eval()


def decode_step_by_step(
    model: EncoderDecoder, tgt: Tensor, memory: Tensor, mask: Tensor | None, states: list | None = None
) -> tuple[Tensor, list]:
    """Logits ``[B, T, V]`` of ``tgt`` fed one token at a time (memory passed only on the first call)."""
    logits = []
    for position in range(tgt.shape[1]):
        first = states is None
        step_logits, states = model.decode(
            tgt[:, position : position + 1],
            memory if first else None,
            mask if first else None,
            states=states,
            position_offset=position,
        )
        logits.append(step_logits)
    return torch.cat(logits, dim=1), states


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("triple", ATTENTION_TRIPLES.values(), ids=ATTENTION_TRIPLES.keys())
def test_step_decoding_equals_parallel_decoding(triple: tuple[str, str, str], norm: str) -> None:
    model = tiny_seq2seq(triple, norm=norm)
    src, tgt = tokens(length=7), tokens(length=6)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    src[1, 5:] = model.pad_id
    memory = model.encode(src, mask)
    parallel, _ = model.decode(tgt, memory, mask)
    stepped, states = decode_step_by_step(model, tgt, memory, mask)
    torch.testing.assert_close(stepped, parallel, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(model(src, mask, tgt), parallel)
    assert len(states) == 2 and all(isinstance(state, CrossBlockState) for state in states)


@pytest.mark.parametrize("triple", ATTENTION_TRIPLES.values(), ids=ATTENTION_TRIPLES.keys())
def test_padding_does_not_change_real_positions(triple: tuple[str, str, str]) -> None:
    model = tiny_seq2seq(triple)
    short, long = tokens(batch=1, length=4), tokens(batch=1, length=7)
    padded = torch.full((2, 7), model.pad_id)
    padded[0, :4], padded[1] = short[0], long[0]
    mask = padded == model.pad_id
    mask[1] = False
    tgt = tokens(batch=1, length=5)
    alone_memory = model.encode(short, None)
    batch_memory = model.encode(padded, mask)
    torch.testing.assert_close(batch_memory[0, :4], alone_memory[0], rtol=1e-9, atol=1e-10)
    alone_logits = model(short, None, tgt)
    batch_logits = model(padded, mask, tgt.expand(2, -1))
    torch.testing.assert_close(batch_logits[:1], alone_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(model.encode(long, None)[0], batch_memory[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("triple", ATTENTION_TRIPLES.values(), ids=ATTENTION_TRIPLES.keys())
def test_reordered_states_continue_the_selected_rows(triple: tuple[str, str, str]) -> None:
    model = tiny_seq2seq(triple)
    src, tgt = tokens(batch=3, length=5), tokens(batch=3, length=6)
    memory = model.encode(src, None)
    _, states = decode_step_by_step(model, tgt[:, :3], memory, None)
    index = torch.tensor([2, 0, 0, 1])
    states = reorder_states(states, index)
    continued = []
    for position in range(3, 6):
        logits, states = model.decode(
            tgt[index, position : position + 1], None, None, states=states, position_offset=position
        )
        continued.append(logits)
    expected = model(src[index], None, tgt[index])[:, 3:]
    torch.testing.assert_close(torch.cat(continued, dim=1), expected, rtol=1e-9, atol=1e-10)


def test_separate_embeddings_and_shared_embeddings() -> None:
    shared = tiny_seq2seq(ATTENTION_TRIPLES["softmax"])
    separate = tiny_seq2seq(ATTENTION_TRIPLES["softmax"], share_embeddings=False)
    assert shared.encoder_embedding is shared.decoder_embedding
    assert separate.encoder_embedding is not separate.decoder_embedding
    count = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert count == VOCAB * 16


def test_delta_rule_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        tiny_seq2seq(("delta", "softmax", "softmax"))
    with pytest.raises(ValueError, match="pad_id"):
        EncoderDecoder(VOCAB, pad_id=VOCAB)
