"""Greedy and beam search (``fwp.model.beam_search``) on small random float64 encoder-decoders."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from fwp.model import EncoderDecoder, EncoderDecoderConfig
from fwp.model.beam_search import beam_search, greedy_decode, max_target_lengths, next_token_log_probs

PAD, BOS, EOS = 0, 1, 2
# decoder self-attention preset → (encoder self-attention, cross-attention): the delta rule is causal
# only, so its encoder and cross-attention use a bidirectional sum-rule core
PRESETS = {
    "softmax": ("softmax", "softmax"),
    "linear": ("linear", "softmax"),
    "performer": ("performer", "performer"),
    "dpfp": ("dpfp", "dpfp"),
    "delta": ("dpfp", "linear"),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_model(decoder: str = "delta", vocab_size: int = 11, **kwargs) -> EncoderDecoder:
    encoder, cross = PRESETS[decoder]
    options = {
        "d_model": 16,
        "n_encoder_layers": 2,
        "n_decoder_layers": 2,
        "n_heads": 2,
        "d_ff": 24,
        "dropout": 0.0,
        "encoder_attention": encoder,
        "decoder_attention": decoder,
        "cross_attention": cross,
        **kwargs,
    }
    return EncoderDecoder(vocab_size, EncoderDecoderConfig(**options)).double().eval()


def sources(lengths: list[int], vocab_size: int = 11) -> tuple[Tensor, Tensor]:
    """Right-padded random sources ``[B, max(lengths)]`` of real tokens (ids ≥ 3) and their pad mask."""
    width = max(lengths)
    src = torch.randint(3, vocab_size, (len(lengths), width))
    mask = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    return src.masked_fill(mask, PAD), mask


def sequence_log_prob(model: EncoderDecoder, src: Tensor, mask: Tensor, tokens: list[int]) -> float:
    """log p(tokens, EOS | src) of one sentence with a parallel (teacher-forced) forward."""
    tgt_in = torch.tensor([[BOS, *tokens]])
    tgt_out = torch.tensor([[*tokens, EOS]])
    log_probs = torch.log_softmax(model(src, mask, tgt_in), dim=-1)
    return float(log_probs.gather(-1, tgt_out[..., None]).sum())


@pytest.mark.parametrize("decoder", list(PRESETS))
def test_step_mode_log_probs_equal_the_parallel_forward(decoder: str) -> None:
    model = tiny_model(decoder)
    src, mask = sources([5, 3, 4])
    tgt_in = torch.cat([torch.full((3, 1), BOS), torch.randint(3, 11, (3, 6))], dim=1)
    parallel = torch.log_softmax(model(src, mask, tgt_in), dim=-1)
    memory, states, stepped = model.encode(src, mask), None, []
    for step in range(tgt_in.shape[1]):
        log_probs, states = next_token_log_probs(model, tgt_in[:, step], states, step, memory, mask)
        stepped.append(log_probs)
    torch.testing.assert_close(torch.stack(stepped, dim=1), parallel, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decoder", ["softmax", "delta", "performer"])
def test_beam_of_one_equals_greedy(decoder: str) -> None:
    model = tiny_model(decoder)
    src, mask = sources([6, 2, 4, 5])
    options = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_len_a": 1.0, "max_len_b": 2}
    greedy = greedy_decode(model, src, mask, **options)
    assert greedy == beam_search(model, src, mask, beam_size=1, length_penalty=0.6, **options)
    assert all(PAD not in tokens and BOS not in tokens and EOS not in tokens for tokens in greedy)


@pytest.mark.parametrize(("seed", "length_penalty"), [(4, 0.0), (3, 1.0)])
def test_beam_search_with_a_wide_beam_finds_the_exhaustive_optimum(seed: int, length_penalty: float) -> None:
    """Tokens {EOS, 3, 4} and at most 3 tokens: 15 hypotheses, all kept by a beam of 16; the result
    must be the arg-max of the normalised score over every hypothesis (for these seeds, greedy search
    misses it)."""
    torch.manual_seed(seed)
    model = tiny_model("delta", vocab_size=5)
    src, mask = sources([3], vocab_size=5)
    options = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_len_a": 0.0, "max_len_b": 3}
    found = beam_search(model, src, mask, beam_size=16, length_penalty=length_penalty, **options)[0]
    with torch.no_grad():
        scores = {
            tokens: sequence_log_prob(model, src, mask, list(tokens)) / (len(tokens) + 1) ** length_penalty
            for length in range(4)
            for tokens in itertools.product((3, 4), repeat=length)
        }
    best = list(max(scores, key=scores.__getitem__))
    assert found == best
    assert greedy_decode(model, src, mask, **options)[0] != best


class ScriptedDecoder:
    """An ``EncoderDecoder`` stand-in over the vocabulary {PAD, BOS, EOS, A} whose next-token
    distribution depends on the step only: ``log p(EOS) = eos_log_probs[step]``, the rest on ``A``
    (PAD and BOS get probability 0). It carries no state (an empty list of layer states)."""

    vocab_size = 4

    def __init__(self, eos_log_probs: list[float]) -> None:
        self.eos_log_probs = eos_log_probs

    def encode(self, src: Tensor, mask: Tensor) -> Tensor:
        return torch.zeros(*src.shape, 1, dtype=torch.float64)

    def decode(self, tgt_in: Tensor, memory, memory_padding_mask, *, states=None, position_offset: int):
        eos = self.eos_log_probs[position_offset]
        logits = torch.tensor([-math.inf, -math.inf, eos, math.log1p(-math.exp(eos))], dtype=torch.float64)
        return logits.expand(tgt_in.shape[0], 1, self.vocab_size), []


def scripted_decoder(scores: list[float]) -> ScriptedDecoder:
    """The ``ScriptedDecoder`` under which the hypothesis ``A^L`` (``L`` tokens, then EOS) has the summed
    log-probability ``scores[L]``: ``log p(EOS at L) = scores[L] − Σ_{t<L} log p(A at t)``."""
    eos_log_probs, prefix = [], 0.0
    for score in scores:
        eos_log_probs.append(score - prefix)
        prefix += math.log1p(-math.exp(eos_log_probs[-1]))
    return ScriptedDecoder(eos_log_probs)


@pytest.mark.parametrize(("length_penalty", "best_length"), [(0.0, 0), (0.75, 1), (1.0, 2), (2.0, 3)])
def test_length_penalty_divides_the_score_by_the_length_with_eos_to_the_power(
    length_penalty: float, best_length: int
) -> None:
    """Pins fairseq's normalised score ``s / (len + 1)^α`` (``len`` tokens plus EOS) with hand-computed
    values. The hypotheses ``[]``, ``[A]``, ``[A, A]``, ``[A, A, A]`` (at most 3 tokens; a beam of 4
    keeps them all) have summed log-probabilities ``s = −1, −1.5, −2.2, −3``; normalised:

    ======  ======  ======  ======  ======
    α       []      [A]     [A,A]   [A,A,A]
    ======  ======  ======  ======  ======
    0       −1      −1.5    −2.2    −3
    0.75    −1      −0.892  −0.965  −1.061
    1       −1      −0.75   −0.733  −0.75
    2       −1      −0.375  −0.244  −0.1875
    ======  ======  ======  ======  ======

    so each length wins for one α. Catches ``len`` without EOS, ``len + 2``, an ignored or inverted
    exponent, and a multiplied instead of divided score."""
    model = scripted_decoder([-1.0, -1.5, -2.2, -3.0])
    src, mask = torch.full((1, 2), 3), torch.zeros(1, 2, dtype=torch.bool)
    options = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_len_a": 0.0, "max_len_b": 3}
    found = beam_search(model, src, mask, beam_size=4, length_penalty=length_penalty, **options)
    assert found == [[3] * best_length]


def test_batched_beam_search_equals_one_sentence_at_a_time() -> None:
    model = tiny_model("delta")
    src, mask = sources([7, 2, 5, 3, 6])
    options = {
        "beam_size": 3,
        "length_penalty": 0.6,
        "bos_id": BOS,
        "eos_id": EOS,
        "pad_id": PAD,
        "max_len_a": 1.2,
        "max_len_b": 3,
    }
    batched = beam_search(model, src, mask, **options)
    for i, length in enumerate((~mask).sum(1).tolist()):
        alone = beam_search(model, src[i : i + 1, :length], mask[i : i + 1, :length], **options)
        assert alone == [batched[i]]


class DecodeRecorder(torch.nn.Module):
    """An ``EncoderDecoder`` wrapper that records the batch size of every ``decode`` call."""

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        self.model, self.vocab_size, self.batch_sizes = model, model.vocab_size, []

    def encode(self, src: Tensor, mask: Tensor) -> Tensor:
        return self.model.encode(src, mask)

    def decode(self, tgt_in: Tensor, memory, memory_padding_mask, **kwargs):
        self.batch_sizes.append(tgt_in.shape[0])
        return self.model.decode(tgt_in, memory, memory_padding_mask, **kwargs)


def test_finished_sentences_leave_the_batch_and_lengths_are_limited() -> None:
    recorder = DecodeRecorder(tiny_model("softmax"))
    src, mask = sources([1, 8])
    options = {"bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "max_len_a": 1.0, "max_len_b": 0}
    hypotheses = beam_search(recorder, src, mask, beam_size=2, **options)
    assert [len(tokens) <= limit for tokens, limit in zip(hypotheses, (1, 8), strict=True)] == [True, True]
    # the one-token sentence is done after step 1 (EOS forced): from step 2 on only the other one's beams
    assert recorder.batch_sizes[:2] == [4, 4]
    assert set(recorder.batch_sizes[2:]) <= {2}


def test_max_target_lengths_follow_a_times_source_length_plus_b() -> None:
    _, mask = sources([4, 1, 10])
    lengths = max_target_lengths(mask, max_len_a=1.5, max_len_b=2)
    assert lengths.tolist() == [8, 3, 17]
    assert max_target_lengths(mask, max_len_a=1.5, max_len_b=2, max_positions=10).tolist() == [8, 3, 9]


def test_bad_decoding_options_are_rejected() -> None:
    model = tiny_model("softmax")
    src, mask = sources([3])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, mask, beam_size=0, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="max_len_a"):
        greedy_decode(model, src, mask, bos_id=BOS, eos_id=EOS, max_len_a=-1.0)
    with pytest.raises(ValueError, match="eos_id"):
        greedy_decode(model, src, mask, bos_id=BOS, eos_id=99)
