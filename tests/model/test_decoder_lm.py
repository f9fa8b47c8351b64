"""DecoderLM: parallel == step mode, segment carry == one pass, adaptive softmax, input checks."""

from __future__ import annotations

import pytest
import torch

from fwp.model import DecoderLM, DecoderLMConfig, step_log_probs
from tests.model.model_cases import FAST_WEIGHT_PRESETS, PRESETS, VOCAB, tiny_lm, tokens


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", PRESETS)
def test_step_mode_equals_parallel_forward(attention: str, norm: str) -> None:
    model = tiny_lm(attention, norm=norm)
    x = tokens()
    parallel = model.log_probs(model(x)[0])
    stepped = step_log_probs(model, x, prompt_length=3)
    torch.testing.assert_close(stepped, parallel[:, 2:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("positional", ["none", "sinusoidal", "learned"])
@pytest.mark.parametrize("attention", FAST_WEIGHT_PRESETS)
def test_segment_carry_equals_one_pass(attention: str, positional: str) -> None:
    model = tiny_lm(attention, positional=positional, max_positions=32)
    x = tokens(length=12)
    whole, _ = model(x)
    first, states = model(x[:, :5])
    second, _ = model(x[:, 5:], states=states, position_offset=5)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-9, atol=1e-10)


def test_position_offset_matters_with_sinusoids() -> None:
    model = tiny_lm("delta", positional="sinusoidal")
    x = tokens(length=6)
    _, states = model(x[:, :3])
    continued, _ = model(x[:, 3:], states=states, position_offset=3)
    restarted, _ = model(x[:, 3:], states=states, position_offset=0)
    assert not torch.allclose(continued, restarted)


def test_bounded_state_tells_fast_weights_from_softmax() -> None:
    assert tiny_lm("delta").bounded_state
    assert not tiny_lm("softmax").bounded_state


@pytest.mark.parametrize("tie", [False, True])
def test_adaptive_softmax_is_a_distribution_and_scores_targets(tie: bool) -> None:
    vocab = 120
    model = DecoderLM(
        vocab,
        DecoderLMConfig(
            d_model=16, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=[10, 50], tie_embeddings=tie
        ),
    ).double()
    x = tokens(length=9, vocab=vocab)
    hidden, _ = model(x)
    assert hidden.shape == (2, 9, 16)
    log_probs = model.log_probs(hidden)
    assert log_probs.dtype == torch.float64
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 9, dtype=torch.float64))
    expected = log_probs.gather(-1, x[..., None]).squeeze(-1)
    torch.testing.assert_close(model.target_log_probs(hidden, x), expected, rtol=1e-12, atol=1e-12)


def test_tied_adaptive_input_reads_the_softmax_weights() -> None:
    """div 1 (Transformer-XL's layout): one V × d table in blocks, no projections; the input embedding
    of token t is row t of the output table."""
    cutoffs, vocab, d = [10, 50], 120, 16
    untied = DecoderLM(
        vocab, DecoderLMConfig(d_model=d, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=cutoffs)
    )
    tied = DecoderLM(
        vocab,
        DecoderLMConfig(
            d_model=d, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=cutoffs, tie_embeddings=True
        ),
    )
    input_parameters = sum(p.numel() for p in untied.adaptive_input.parameters())
    assert input_parameters == vocab * d  # Transformer-XL's AdaptiveEmbedding at div 1: no projections
    assert count_parameters(untied) - count_parameters(tied) == input_parameters
    softmax = tied.adaptive_softmax
    assert count_parameters(softmax) == vocab * d + vocab + 2 * d + 2
    x = torch.tensor([[3, 10, 49, 50, 119]])
    embedded = tied.embed(x)[0]
    torch.testing.assert_close(embedded[0], softmax.tables[0][3])
    torch.testing.assert_close(embedded[1], softmax.tables[1][0])
    torch.testing.assert_close(embedded[2], softmax.tables[1][39])
    torch.testing.assert_close(embedded[4], softmax.tables[2][69])
    embedded.sum().backward()
    assert softmax.tables[0].grad[3].abs().sum() > 0


def test_tied_adaptive_input_with_div_value_reads_the_projections() -> None:
    """div 2: clusters 1, 2 have widths 8, 4 and projections P_i [d, h_i]; e(t) = E_i[t − c_i] P_iᵀ."""
    model = DecoderLM(
        120,
        DecoderLMConfig(
            d_model=16, n_heads=2, adaptive_cutoffs=[10, 50], adaptive_div_value=2.0, tie_embeddings=True
        ),
    )
    softmax = model.adaptive_softmax
    assert [tuple(t.shape) for t in softmax.tables] == [(10, 16), (40, 8), (70, 4)]
    assert [tuple(p.shape) for p in softmax.projections] == [(16, 8), (16, 4)]
    embedded = model.embed(torch.tensor([[119]]))[0, 0]
    torch.testing.assert_close(embedded, softmax.tables[2][69] @ softmax.projections[1].T)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tied_embeddings_share_the_output_matrix() -> None:
    tied, untied = tiny_lm("linear", tie_embeddings=True), tiny_lm("linear")
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 16
    logits, _ = tied(tokens(batch=1, length=1))
    tied.embedding.weight.grad = None
    logits[0, 0, 5].backward()
    assert tied.embedding.weight.grad[5].abs().sum() > 0, "the output layer must read the embedding"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adaptive_cutoffs": [20, 10]}, "adaptive_cutoffs"),
        ({"adaptive_cutoffs": [5, VOCAB]}, "adaptive_cutoffs"),
        ({"positional": "rotary"}, "positional"),
        ({"norm": "sandwich"}, "norm"),
        ({"dropout": 1.5}, "dropout"),
        ({"n_layers": 0}, "layers"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DecoderLM(VOCAB, DecoderLMConfig(d_model=16, n_heads=2, **kwargs))


def test_bad_inputs_are_named() -> None:
    model = tiny_lm("delta", positional="learned", max_positions=8)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="max_positions"):
        model(tokens(length=4), position_offset=5)
    with pytest.raises(ValueError, match="states"):
        model(tokens(length=4), states=[None])
    adaptive = DecoderLM(VOCAB, DecoderLMConfig(d_model=16, n_heads=2, adaptive_cutoffs=[5]))
    with pytest.raises(ValueError, match="vocab_size"):
        adaptive(torch.tensor([[VOCAB]]))


def test_adaptive_log_distribution_is_float32_and_normalised_under_bf16_autocast() -> None:
    model = DecoderLM(
        120, DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=[10, 50])
    ).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs = model.log_probs(model(tokens(length=5, vocab=120))[0])
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5), rtol=0, atol=1e-5)


def test_untied_adaptive_input_has_the_softmax_layout() -> None:
    """Untied (Transformer-XL's AdaptiveEmbedding): its own tables, projections only where h_i < d."""
    model = DecoderLM(
        120, DecoderLMConfig(d_model=16, n_heads=2, adaptive_cutoffs=[10, 50], adaptive_div_value=2.0)
    )
    embedding = model.adaptive_input
    assert [tuple(p.shape) for p in embedding.projections] == [(16, 8), (16, 4)]
    assert all(a is not b for a, b in zip(embedding.tables, model.adaptive_softmax.tables, strict=True))
    torch.testing.assert_close(
        model.embed(torch.tensor([[3, 119]]))[0],
        torch.stack([embedding.tables[0][3], embedding.tables[2][69] @ embedding.projections[1].T]),
    )
