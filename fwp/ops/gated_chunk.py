"""The gated chunk backend: the chunkwise gated sum and delta rules with a hand-written backward.

The maths is in ``fwp.ops.gated_chunk_math``; the oracle is ``fwp.ops.gated_reference``. As in
``fwp.ops.chunk``, the forward and backward over the chunks are ``torch.library`` custom ops
(``fwp::gated_sum_rule_chunks``, ``fwp::gated_delta_rule_chunks`` and their ``_backward``s) with fake
implementations and registered autograd, so that ``torch.compile`` keeps each as one graph node.
Inside a chunk the decay enters through differences of cumulative log-decays (never an
exponential of a positive number); between chunks the state is decayed by the chunk's total decay.

- Gated sum rule: saves the inputs, the chunk-start states, the decay products ``Γ`` (built once, in
  the forward) and the final state. Gated delta rule: saves the same and ``T = A⁻¹``.
- Forward and backward walk the chunks one at a time, one chunk of every head per step, so that a
  step's temporaries stay in the cache (batched over all chunks, every element-wise pass and product
  streams the whole sequence through memory, which measured slower); the backward runs in reverse
  (``fwp.ops.gated_chunk_math.gated_chunks_backward``), recomputing each chunk's scores (and, for the
  delta rule, its residuals and pseudo-values).
- Both: the gradient of ``log_decay`` follows from those of q and v and the final state
  (``fwp.ops.gated_chunk_math.log_decay_gradient``).

Like the ungated backends, these compute the read-out numerator and ``W`` only. The gated denominator
``z_t = α_t z_{t−1} + φ(k_t)``, ``den_t = φ(q_t) · z_t`` is the gated sum rule on the value 1
(``gated_causal_denominator``), so it runs through the same op (and its gradients into ``log_decay``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fwp.ops.chunk import _output_gradients, _save_inputs_and_residuals, dense
from fwp.ops.chunk_math import merge_chunks, split_beta_chunks, split_chunks
from fwp.ops.gated_chunk_math import (
    ChunkDecay,
    gated_chunks_backward,
    gated_delta_chunk_backward,
    gated_delta_rule_forward,
    gated_sum_chunk_backward,
    gated_sum_rule_forward,
    log_decay_gradient,
)
from fwp.ops.gated_reference import validate_log_decay
from fwp.ops.state import FastWeightState


@torch.library.custom_op("fwp::gated_sum_rule_chunks", mutates_args=())
def gated_sum_rule_chunks(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gated sum rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, log_decay
    ``[G, N, C]``, initial ``[G, d, d_v]`` → outputs ``[G, N, C, d_v]``, the final state ``[G, d, d_v]``,
    and for the backward (not differentiable) the chunk-start states ``[G, N, d, d_v]``, the decay
    products ``Γ`` ``[G, N, C, C]`` and the final state again (the op's outputs are not saved)."""
    decay = ChunkDecay.of(log_decay)
    out, final, starts = gated_sum_rule_forward(q, k, v, decay, initial)
    return dense(out, final, starts, decay.within, final.clone())


@gated_sum_rule_chunks.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    G, chunks, size, d = q.shape
    d_v = v.shape[-1]
    return (
        q.new_empty(G, chunks, size, d_v),
        q.new_empty(G, d, d_v),
        q.new_empty(G, chunks, d, d_v),
        q.new_empty(G, chunks, size, size),
        q.new_empty(G, d, d_v),
    )


@torch.library.custom_op("fwp::gated_sum_rule_chunks_backward", mutates_args=())
def gated_sum_rule_chunks_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    starts: Tensor,
    within: Tensor,
    final: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, d log_decay, dS_0`` of ``gated_sum_rule_chunks`` (``starts``: the chunk-start states)."""
    decay = ChunkDecay.of(log_decay, within)
    d_q, d_k, d_v, d_cumulative, d_initial = gated_chunks_backward(
        gated_sum_chunk_backward, (q, k, v), (starts,), decay, d_out.contiguous(), d_final
    )
    return dense(d_q, d_k, d_v, log_decay_gradient(d_cumulative, final, d_final), d_initial)


@gated_sum_rule_chunks_backward.register_fake
def _(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    starts: Tensor,
    within: Tensor,
    final: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (q, k, v, log_decay, d_final))


def _gated_sum_rule_backward(
    ctx: Any, d_out: Tensor | None, d_final: Tensor | None, *_: None
) -> tuple[Tensor, ...]:
    return gated_sum_rule_chunks_backward(*ctx.saved_tensors, *_output_gradients(ctx, d_out, d_final))


gated_sum_rule_chunks.register_autograd(_gated_sum_rule_backward, setup_context=_save_inputs_and_residuals)


@torch.library.custom_op("fwp::gated_delta_rule_chunks", mutates_args=())
def gated_delta_rule_chunks(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gated delta rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, beta and
    log_decay ``[G, N, C]``, initial ``[G, d, d_v]`` → outputs ``[G, N, C, d_v]``, the final state
    ``[G, d, d_v]``, and for the backward (not differentiable) ``T = A⁻¹`` ``[G, N, C, C]``, the
    chunk-start states ``[G, N, d, d_v]``, the decay products ``Γ`` ``[G, N, C, C]`` and the final
    state again (the op's outputs are not saved)."""
    decay = ChunkDecay.of(log_decay)
    out, final, inverse, starts = gated_delta_rule_forward(q, k, v, beta, decay, initial)
    return dense(out, final, inverse, starts, decay.within, final.clone())


@gated_delta_rule_chunks.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    G, chunks, size, d = q.shape
    d_v = v.shape[-1]
    return (
        q.new_empty(G, chunks, size, d_v),
        q.new_empty(G, d, d_v),
        q.new_empty(G, chunks, size, size),
        q.new_empty(G, chunks, d, d_v),
        q.new_empty(G, chunks, size, size),
        q.new_empty(G, d, d_v),
    )


@torch.library.custom_op("fwp::gated_delta_rule_chunks_backward", mutates_args=())
def gated_delta_rule_chunks_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    inverse: Tensor,
    starts: Tensor,
    within: Tensor,
    final: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dβ, d log_decay, dS_0`` of ``gated_delta_rule_chunks`` (``starts``: the chunk-start
    states): ``gated_delta_rule_backward``, then the log-decays' gradient from those of q and v."""
    decay = ChunkDecay.of(log_decay, within)
    *grads, d_cumulative, d_initial = gated_chunks_backward(
        gated_delta_chunk_backward, (q, k, v, beta), (inverse, starts), decay, d_out.contiguous(), d_final
    )
    return dense(*grads, log_decay_gradient(d_cumulative, final, d_final), d_initial)


@gated_delta_rule_chunks_backward.register_fake
def _(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    inverse: Tensor,
    starts: Tensor,
    within: Tensor,
    final: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (q, k, v, beta, log_decay, d_final))


def _gated_delta_rule_backward(
    ctx: Any, d_out: Tensor | None, d_final: Tensor | None, *_: None
) -> tuple[Tensor, ...]:
    return gated_delta_rule_chunks_backward(*ctx.saved_tensors, *_output_gradients(ctx, d_out, d_final))


gated_delta_rule_chunks.register_autograd(
    _gated_delta_rule_backward, setup_context=_save_inputs_and_residuals
)


def gated_chunk_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor,
    state: FastWeightState,
    *,
    chunk_size: int = 64,
) -> tuple[Tensor, FastWeightState]:
    """The numerator and memory of ``fwp.ops.gated_reference.gated_reference_backend`` computed
    chunkwise (the delta rule when ``beta`` is given, else the sum rule).

    q, k: ``[B, H, T, d_dot]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` or None; log_decay:
    ``[B, H, T]`` (finite, ``≤ 0``); state: ``W_0`` ``[B, H, d_dot, d_v]`` (``z`` is not read), all in
    one floating dtype with autocast off (as the entry point calls every backend). The chunk length is
    ``min(chunk_size, T)``. Returns ``φ(q_t) W_t``: ``[B, H, T, d_v]`` and the final ``W``.
    """
    validate_log_decay(log_decay, q)
    B, H, T, d_dot = q.shape
    d_v = v.shape[-1]
    size = max(1, min(chunk_size, T))
    chunked = [split_chunks(x, size) for x in (q, k, v)]
    decays = split_beta_chunks(log_decay, size)
    initial = state.W.reshape(B * H, d_dot, d_v)
    if beta is None:
        out, final, *_ = gated_sum_rule_chunks(*chunked, decays, initial)
    else:
        out, final, *_ = gated_delta_rule_chunks(*chunked, split_beta_chunks(beta, size), decays, initial)
    return merge_chunks(out, B, H, T), FastWeightState(final.view(B, H, d_dot, d_v))


def gated_causal_denominator(
    phi_q: Tensor,
    phi_k: Tensor,
    log_decay: Tensor,
    z0: Tensor | None,
    *,
    backend: Callable[..., tuple[Tensor, FastWeightState]] = gated_chunk_backend,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The gated denominator: ``z_t = α_t z_{t−1} + φ(k_t)`` and ``den_t = φ(q_t) · z_t``, as the gated
    sum rule on the value 1 (``z`` a ``[d_dot, 1]`` memory) on a gated backend.

    phi_q, phi_k: ``[B, H, T, d_dot]``; log_decay ``[B, H, T]``; z0: ``[B, H, d_dot]`` or None (zeros).
    Returns ``den``: ``[B, H, T]`` and the final ``z_T``: ``[B, H, d_dot]``.
    """
    B, H, _, d_dot = phi_k.shape
    memory = phi_k.new_zeros(B, H, d_dot, 1) if z0 is None else z0.unsqueeze(-1)
    ones = phi_k.new_ones(*phi_k.shape[:-1], 1)
    den, final = backend(phi_q, phi_k, ones, None, log_decay, FastWeightState(memory), chunk_size=chunk_size)
    return den.squeeze(-1), final.W.squeeze(-1)
