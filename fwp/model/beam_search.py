"""Autoregressive decoding of an ``EncoderDecoder``: greedy search and beam search.

The source is encoded once; the decoder is then fed one token per step with the states of the previous
step (``decode(..., states=..., position_offset=step)``): a fast-weight layer carries its fixed-size
memory ``W`` ``[N, H, d_dot, d_head]``, so each new token costs O(1) in the target length; a softmax
layer carries a growing key/value cache; cross-attention reads the encoder keys cached at step 0.

Both searches work on a batch of sentences at once, return the tokens of the best hypothesis per
sentence (without BOS and EOS) and share the step rules:

- the log-distribution of the next token is computed in at least float32;
- ``bos_id`` (and ``pad_id`` when given) are never generated;
- a sentence with ``src_len`` source tokens gets at most ``max_len = floor(max_len_a · src_len +
  max_len_b)`` tokens before its EOS (capped so that positions stay below ``max_positions``): at step
  ``max_len`` only EOS is allowed. ``max_len`` is per sentence, so results do not depend on batching.

Beam search follows fairseq: hypothesis scores are summed log-probabilities; each step ranks the
``2K`` best extensions of the ``K`` beams of a sentence; an EOS extension among the top ``K`` is a
finished hypothesis with normalised score ``score / (len + 1)^length_penalty`` (``len`` tokens plus
EOS); the ``K`` best non-EOS extensions continue. A sentence stops once it has ``K`` finished
hypotheses or reaches its ``max_len``; its rows then leave the batch (the states are shrunk with
``reorder_states``), so finished sentences cost nothing. With ``beam_size = 1`` this is greedy search.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fwp.model.encoder_decoder import EncoderDecoder
from fwp.model.states import reorder_states


def max_target_lengths(
    src_padding_mask: Tensor, *, max_len_a: float, max_len_b: int, max_positions: int | None = None
) -> Tensor:
    """Per-sentence limit on generated tokens before EOS, ``[B]`` long: ``floor(a · src_len + b)`` with
    ``src_len`` the number of non-pad source tokens, at most ``max_positions − 1``."""
    if max_len_a < 0 or max_len_b < 0:
        raise ValueError(
            f"max_len_a and max_len_b must be >= 0, got max_len_a={max_len_a}, max_len_b={max_len_b}"
        )
    src_lengths = (~src_padding_mask).sum(dim=1).to(torch.float64)
    lengths = torch.floor(max_len_a * src_lengths + max_len_b).long()
    if max_positions is not None:
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got max_positions={max_positions}")
        lengths = lengths.clamp(max=max_positions - 1)
    return lengths


def next_token_log_probs(
    model: EncoderDecoder,
    tokens: Tensor,
    states: list | None,
    step: int,
    memory: Tensor,
    memory_padding_mask: Tensor,
) -> tuple[Tensor, list]:
    """Feed ``tokens`` ``[N]`` at position ``step`` after ``states`` (None at step 0, when the memory
    ``[N, S, d_model]`` is read and cached); the log-distribution of the next token ``[N, V]`` (float32
    or float64) and the new states."""
    if states is None:
        logits, states = model.decode(tokens[:, None], memory, memory_padding_mask, position_offset=step)
    else:
        logits, states = model.decode(tokens[:, None], None, None, states=states, position_offset=step)
    logits = logits[:, -1]
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1), states


def constrain_log_probs(
    log_probs: Tensor, *, step: int, max_lengths: Tensor, bos_id: int, eos_id: int, pad_id: int | None
) -> Tensor:
    """``log_probs`` ``[N, V]`` with BOS (and PAD) forbidden, and only EOS allowed in the rows whose
    ``max_lengths`` ``[N]`` is reached at this ``step``."""
    log_probs = log_probs.clone()
    banned = [token for token in (bos_id, pad_id) if token is not None and token != eos_id]
    log_probs[:, banned] = -math.inf
    at_limit = max_lengths <= step
    if bool(at_limit.any()):
        eos = log_probs[at_limit, eos_id]
        log_probs[at_limit] = -math.inf
        log_probs[at_limit, eos_id] = eos
    return log_probs


def _check_special_ids(vocab_size: int, **ids: int | None) -> None:
    for name, value in ids.items():
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"{name} must be in [0, vocab_size={vocab_size}), got {name}={value}")


@torch.no_grad()
def greedy_decode(
    model: EncoderDecoder,
    src: Tensor,
    src_padding_mask: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int | None = None,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    max_positions: int | None = None,
) -> list[list[int]]:
    """The most likely token at every step, for a batch ``src`` ``[B, S]`` (``src_padding_mask``
    ``[B, S]`` True at pads); the generated tokens per sentence, without BOS and EOS."""
    _check_special_ids(model.vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    memory = model.encode(src, src_padding_mask)
    max_lengths = max_target_lengths(
        src_padding_mask, max_len_a=max_len_a, max_len_b=max_len_b, max_positions=max_positions
    )
    tokens = torch.full((src.shape[0],), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    states = None
    generated: list[Tensor] = []
    for step in range(int(max_lengths.max()) + 1):
        log_probs, states = next_token_log_probs(model, tokens, states, step, memory, src_padding_mask)
        log_probs = constrain_log_probs(
            log_probs, step=step, max_lengths=max_lengths, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id
        )
        tokens = log_probs.argmax(dim=-1)
        generated.append(tokens)
        finished |= tokens == eos_id
        if bool(finished.all()):
            break
    return [_until_eos(row, eos_id) for row in torch.stack(generated, dim=1).tolist()]


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def beam_search(
    model: EncoderDecoder,
    src: Tensor,
    src_padding_mask: Tensor,
    *,
    beam_size: int,
    length_penalty: float = 1.0,
    bos_id: int,
    eos_id: int,
    pad_id: int | None = None,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    max_positions: int | None = None,
) -> list[list[int]]:
    """Beam search (module docstring) over a batch ``src`` ``[B, S]``, all sentences × ``beam_size``
    beams decoded together; the best finished hypothesis per sentence, without BOS and EOS."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got beam_size={beam_size}")
    _check_special_ids(model.vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    K = beam_size
    device = src.device
    max_lengths = max_target_lengths(
        src_padding_mask, max_len_a=max_len_a, max_len_b=max_len_b, max_positions=max_positions
    )
    rows = torch.arange(src.shape[0], device=device).repeat_interleave(K)
    memory = model.encode(src, src_padding_mask).index_select(0, rows)
    memory_padding_mask = src_padding_mask.index_select(0, rows)

    sentences = torch.arange(src.shape[0], device=device)  # the original index of each active sentence
    scores = torch.full((src.shape[0], K), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # one live beam per sentence at the start: no duplicate hypotheses
    history = torch.empty(src.shape[0] * K, 0, dtype=torch.long, device=device)
    tokens = torch.full((src.shape[0] * K,), bos_id, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(src.shape[0])]
    ranks = torch.arange(2 * K, device=device)
    states = None
    step = 0
    while True:
        log_probs, states = next_token_log_probs(model, tokens, states, step, memory, memory_padding_mask)
        log_probs = constrain_log_probs(
            log_probs,
            step=step,
            max_lengths=max_lengths[sentences].repeat_interleave(K),
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
        )
        n, V = sentences.numel(), log_probs.shape[-1]
        extensions = (scores[:, :, None] + log_probs.view(n, K, V).to(scores.dtype)).view(n, K * V)
        candidate_scores, flat = extensions.topk(2 * K, dim=1)  # [n, 2K], best first
        candidate_beams, candidate_tokens = flat // V, flat % V
        is_eos = candidate_tokens == eos_id
        _collect_finished(
            finished,
            sentences,
            is_eos[:, :K] & candidate_scores[:, :K].isfinite(),
            candidate_scores,
            history.view(n, K, step),
            candidate_beams,
            normaliser=(step + 1) ** length_penalty,
            beam_size=K,
        )
        done = torch.tensor([len(finished[s]) >= K for s in sentences.tolist()], device=device)
        done |= max_lengths[sentences] <= step
        if bool(done.all()):
            break
        # the K best non-EOS extensions (there are at least K: each beam has one EOS extension)
        continuing = (is_eos.long() * 2 * K + ranks).topk(K, dim=1, largest=False).indices
        keep = (~done).nonzero().squeeze(1)
        continuing = continuing[keep]
        beams = candidate_beams[keep].gather(1, continuing)
        selected = (keep[:, None] * K + beams).view(-1)
        states = reorder_states(states, selected)
        tokens = candidate_tokens[keep].gather(1, continuing).view(-1)
        history = torch.cat([history[selected], tokens[:, None]], dim=1)
        scores = candidate_scores[keep].gather(1, continuing)
        sentences = sentences[keep]
        step += 1
    return [max(hypotheses, key=lambda hypothesis: hypothesis[0])[1] for hypotheses in finished]


def _collect_finished(
    finished: list[list[tuple[float, list[int]]]],
    sentences: Tensor,
    finalize: Tensor,
    candidate_scores: Tensor,
    history: Tensor,
    candidate_beams: Tensor,
    *,
    normaliser: float,
    beam_size: int,
) -> None:
    """Append ``(score / normaliser, tokens)`` for each ``finalize`` ``[n, K]`` candidate (an EOS
    extension of beam ``candidate_beams[i, r]`` with prefix ``history[i, beam]``) to its sentence's
    list, best first, up to ``beam_size`` hypotheses per sentence."""
    for i, rank in finalize.nonzero().tolist():
        hypotheses = finished[int(sentences[i])]
        if len(hypotheses) < beam_size:
            prefix = history[i, candidate_beams[i, rank]].tolist()
            hypotheses.append((float(candidate_scores[i, rank]) / normaliser, prefix))
