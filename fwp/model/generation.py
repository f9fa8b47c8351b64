"""Autoregressive generation from a ``DecoderLM`` in step mode.

The prompt is run once in parallel (prefill); then each new token is fed alone with the states of the
previous call. A fast-weight layer's state is its fixed-size memory ``W`` (``[B, H, d_dot, d_head]``),
so time and memory per new token do not grow with the context; a softmax layer's key/value cache does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fwp.model.decoder_lm import DecoderLM, check_tokens
from fwp.model.positions import LearnedPositions


def position_limit(model: DecoderLM) -> int | None:
    """The number of positions ``model`` can encode: ``max_positions`` of a learned table, None (no
    limit) for sinusoidal or no positions."""
    positions = model.input_encoding.positions
    return positions.embedding.num_embeddings if isinstance(positions, LearnedPositions) else None


def check_sampling_options(*, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """A ``ValueError`` naming the first invalid option: ``max_new_tokens >= 0``, a finite
    ``temperature >= 0`` (0 = greedy), ``top_k >= 1`` or None."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got max_new_tokens={max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0.0):
        raise ValueError(f"temperature must be finite and >= 0 (0: greedy), got temperature={temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got top_k={top_k}")


def check_generation_fits(model: DecoderLM, prompt_length: int, max_new_tokens: int) -> None:
    """A ``ValueError`` naming the options unless continuing a prompt of ``prompt_length`` tokens by
    ``max_new_tokens`` stays within ``position_limit(model)``: the model is fed positions ``0 …
    prompt_length + max_new_tokens − 2`` (the last new token is never fed back)."""
    limit = position_limit(model)
    needed = prompt_length + max_new_tokens - 1
    if limit is not None and needed > limit:
        raise ValueError(
            f"generation needs {needed} positions (a prompt of {prompt_length} tokens + max_new_tokens="
            f"{max_new_tokens} − 1), beyond max_positions={limit} of positional='learned': shorten the "
            "prompt (prompt_length, prompt or prompt_file) or max_new_tokens, or train with a larger "
            "max_positions"
        )


def next_token_log_probs(
    model: DecoderLM, tokens: Tensor, states: list | None, position_offset: int
) -> tuple[Tensor, list]:
    """Feed ``tokens`` ``[B, T]`` after ``states``; the float32 log-distribution of the token after them
    ``[B, V]`` and the new states."""
    output, states = model(tokens, states=states, position_offset=position_offset)
    return model.log_probs(output[:, -1]), states


@torch.no_grad()
def step_log_probs(model: DecoderLM, tokens: Tensor, *, prompt_length: int = 1) -> Tensor:
    """The log-distributions ``[B, T − prompt_length + 1, V]`` of positions ``prompt_length − 1 …
    T − 1`` (each predicting the next token) computed in step mode: a parallel prefill of the first
    ``prompt_length`` tokens, then one token at a time. Equal to ``model.log_probs`` of a parallel
    forward over ``tokens`` at those positions (the step-mode contract)."""
    check_tokens("tokens", tokens)
    if not 1 <= prompt_length <= tokens.shape[1]:
        raise ValueError(
            f"prompt_length must be in [1, T={tokens.shape[1]}], got prompt_length={prompt_length}"
        )
    log_probs, states = next_token_log_probs(model, tokens[:, :prompt_length], None, 0)
    collected = [log_probs]
    for position in range(prompt_length, tokens.shape[1]):
        log_probs, states = next_token_log_probs(model, tokens[:, position : position + 1], states, position)
        collected.append(log_probs)
    return torch.stack(collected, dim=1)


def choose_tokens(
    log_probs: Tensor, *, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    """One token per row ``[B]`` from log-distributions ``[B, V]``: the argmax when ``temperature`` is 0,
    else a draw from ``softmax(log_probs / temperature)`` restricted to the ``top_k`` likeliest tokens."""
    if temperature == 0.0:
        return log_probs.argmax(dim=-1)
    scores = log_probs / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth_best = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample(
    model: DecoderLM,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue ``prompt`` ``[B, T_0]`` by ``max_new_tokens`` tokens → ``[B, T_0 + max_new_tokens]``.

    ``temperature`` 0 decodes greedily; ``top_k`` keeps only the k likeliest tokens per step;
    ``generator`` seeds the draws. The caller chooses train/eval mode (use eval: no dropout).
    A ``ValueError`` names the options when the positions would overflow (``check_generation_fits``).
    """
    check_tokens("prompt", prompt)
    if prompt.shape[1] < 1:
        raise ValueError("prompt must hold at least one token per row, got T_0=0")
    check_sampling_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    check_generation_fits(model, prompt.shape[1], max_new_tokens)
    tokens = prompt
    log_probs, states = next_token_log_probs(model, prompt, None, 0)
    for _ in range(max_new_tokens):
        chosen = choose_tokens(log_probs, temperature=temperature, top_k=top_k, generator=generator)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        if tokens.shape[1] == prompt.shape[1] + max_new_tokens:
            break
        log_probs, states = next_token_log_probs(model, chosen[:, None], states, tokens.shape[1] - 1)
    return tokens
