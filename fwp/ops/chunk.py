"""The ``chunk`` backend: the chunkwise-parallel fast-weight recurrence with a hand-written backward.

The forward and backward over the chunks are ``torch.library`` custom ops (``fwp::sum_rule_chunks``,
``fwp::delta_rule_chunks`` and their ``_backward``s) with fake implementations and registered autograd,
so that ``torch.compile`` keeps each as one node of the graph (traced, their loops over the chunks would
be unrolled into it: the compile time would grow with ``T / C``).
The sequence is cut into chunks of ``C`` steps (zero-padded at the end); inside a chunk everything is
a matrix product (``fwp.ops.chunk_math``), between chunks only the state ``S`` ``[d, d_v]`` is carried.
No per-step state is ever stored. The Katharopoulos denominator is ``fwp.ops.fast_weight_attention``'s.

- Sum rule: saves the inputs and the ``N`` chunk-start states; the backward recomputes ``P`` and forms
  every gradient for all chunks at once, but for the adjoint state scan over the chunks in reverse.
  Per chunk, from ``O = Q S + P V`` and ``S' = S + Kᵀ V`` with ``P = tril(Q Kᵀ)`` and ``dS'`` the
  gradient of the state after the chunk: ``dS = dS' + Qᵀ dO``; ``dV = Pᵀ dO + K dS'``;
  ``dQ = dO Sᵀ + tril(dO Vᵀ) K``; ``dK = tril(dO Vᵀ)ᵀ Q + V dS'ᵀ``.
- Delta rule: saves the inputs, the chunk-start states and ``T = A⁻¹``; the backward walks the chunks
  in reverse and recomputes each chunk's pseudo-values and scores (``delta_chunk_backward`` has the
  formulas), so that beyond the gradients it holds one chunk's temporaries only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fwp.ops.chunk_math import (
    add_product_,
    causal_scores,
    chunk_read,
    delta_chunk_values,
    delta_rule_scan,
    merge_chunks,
    split_beta_chunks,
    split_chunks,
    sum_rule_states,
    transpose,
    wy_inverse,
)
from fwp.ops.state import FastWeightState


def read_gradients(q: Tensor, k: Tensor, v: Tensor, starts: Tensor, d_out: Tensor) -> tuple[Tensor, Tensor]:
    """``dQ = dO Sᵀ + tril(dO Vᵀ) K`` and the read's part of ``dK``, ``tril(dO Vᵀ)ᵀ Q``, of
    ``O = Q S + tril(Q Kᵀ) V`` (start states ``S``); both ``[G, N, C, d]``."""
    d_scores = (d_out @ transpose(v)).tril_()
    d_q = add_product_(d_out @ transpose(starts), d_scores, k)
    return d_q, transpose(d_scores) @ q


def adjoint_scan_(
    q: Tensor, k: Tensor, v: Tensor, d_out: Tensor, d_final: Tensor, d_v: Tensor, d_k: Tensor
) -> Tensor:
    """The sum rule's state gradients, chunks in reverse: ``dS_n = dS_{n+1} + Q_nᵀ dO_n`` from
    ``dS_N`` = d_final; then in place ``dV_n += K_n dS_{n+1}`` and ``dK_n += V_n dS_{n+1}ᵀ`` for all
    chunks at once. q, k ``[G, N, C, d]``; v, d_out, d_v ``[G, N, C, d_v]``. Returns ``dS_0``."""
    G, chunks, _, d = q.shape
    d_next = d_final.new_empty(G, chunks, d, d_final.shape[-1])
    d_state = d_final
    for n in reversed(range(chunks)):
        d_next[:, n] = d_state
        d_state = torch.baddbmm(d_state, transpose(q[:, n]), d_out[:, n])
    add_product_(d_v, k, d_next)
    add_product_(d_k, v, transpose(d_next))
    return d_state


def dense(*xs: Tensor) -> tuple[Tensor, ...]:
    """The outputs of a chunk op, contiguous as its fake implementation promises (the compiled graph
    relies on the strides; a no-op for the fresh products they already are)."""
    return tuple(x.contiguous() for x in xs)


@torch.library.custom_op("fwp::sum_rule_chunks", mutates_args=())
def sum_rule_chunks(q: Tensor, k: Tensor, v: Tensor, initial: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sum rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, initial ``[G, d, d_v]``
    → outputs ``[G, N, C, d_v]``, the final state ``[G, d, d_v]`` and the chunk-start states
    ``[G, N, d, d_v]`` (kept for the backward; not differentiable)."""
    starts, final = sum_rule_states(k, v, initial)
    return dense(chunk_read(q, causal_scores(q, k), v, starts), final, starts)


@sum_rule_chunks.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, initial: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    G, chunks, size, d = q.shape
    d_v = v.shape[-1]
    return q.new_empty(G, chunks, size, d_v), q.new_empty(G, d, d_v), q.new_empty(G, chunks, d, d_v)


@torch.library.custom_op("fwp::sum_rule_chunks_backward", mutates_args=())
def sum_rule_chunks_backward(
    q: Tensor, k: Tensor, v: Tensor, starts: Tensor, d_out: Tensor, d_final: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dS_0`` of ``sum_rule_chunks`` (formulas in the module docstring)."""
    d_out = d_out.contiguous()
    d_q, d_k = read_gradients(q, k, v, starts, d_out)
    d_v = transpose(causal_scores(q, k)) @ d_out
    d_initial = adjoint_scan_(q, k, v, d_out, d_final, d_v, d_k)
    return dense(d_q, d_k, d_v, d_initial)


@sum_rule_chunks_backward.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, starts: Tensor, d_out: Tensor, d_final: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (q, k, v, d_final))


def _save_inputs_and_residuals(ctx: Any, inputs: tuple[Tensor, ...], output: tuple[Tensor, ...]) -> None:
    """Autograd context of a chunk op: its inputs but the initial state (the last input), then its
    residual outputs (all after ``out`` and ``final``), which get no gradient. Gradients are not
    materialised: the residuals would otherwise get zero tensors of their size in every backward."""
    residuals = output[2:]
    ctx.mark_non_differentiable(*residuals)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:-1], *residuals)
    ctx.shapes = output[0].shape, output[1].shape


def _output_gradients(ctx: Any, d_out: Tensor | None, d_final: Tensor | None) -> tuple[Tensor, Tensor]:
    """The gradients of ``out`` and ``final``, zeros for one that reached no loss."""
    reference = ctx.saved_tensors[0]
    d_out = reference.new_zeros(ctx.shapes[0]) if d_out is None else d_out
    return d_out, reference.new_zeros(ctx.shapes[1]) if d_final is None else d_final


def _sum_rule_backward(ctx: Any, d_out: Tensor | None, d_final: Tensor | None, _: None) -> tuple[Tensor, ...]:
    return sum_rule_chunks_backward(*ctx.saved_tensors, *_output_gradients(ctx, d_out, d_final))


sum_rule_chunks.register_autograd(_sum_rule_backward, setup_context=_save_inputs_and_residuals)


@torch.library.custom_op("fwp::delta_rule_chunks", mutates_args=())
def delta_rule_chunks(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Delta rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, beta ``[G, N, C]``,
    initial ``[G, d, d_v]`` → outputs ``[G, N, C, d_v]``, the final state ``[G, d, d_v]``, and for the
    backward (not differentiable) ``T = A⁻¹`` ``[G, N, C, C]`` and the chunk-start states
    ``[G, N, d, d_v]``."""
    inverse = wy_inverse(beta.unsqueeze(-1) * k, k)
    pseudo_values, starts, final = delta_rule_scan(k, v, beta, inverse, initial)
    return dense(chunk_read(q, causal_scores(q, k), pseudo_values, starts), final, inverse, starts)


@delta_rule_chunks.register_fake
def _(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    G, chunks, size, d = q.shape
    d_v = v.shape[-1]
    return (
        q.new_empty(G, chunks, size, d_v),
        q.new_empty(G, d, d_v),
        q.new_empty(G, chunks, size, size),
        q.new_empty(G, chunks, d, d_v),
    )


@torch.library.custom_op("fwp::delta_rule_chunks_backward", mutates_args=())
def delta_rule_chunks_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    inverse: Tensor,
    starts: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dβ, dS_0`` of ``delta_rule_chunks``: the chunks in reverse, each recomputing its
    pseudo-values and scores (``delta_chunk_backward``), so that beyond the gradients it holds only one
    chunk's temporaries."""
    d_out = d_out.contiguous()
    grads = tuple(x.new_empty(x.shape) for x in (q, k, v, beta))
    d_state = d_final
    for n in reversed(range(q.shape[1])):
        chunk = (x[:, n] for x in (q, k, v, beta, inverse, starts, d_out))
        *chunk_grads, d_state = delta_chunk_backward(*chunk, d_state)
        for grad in grads:  # popped: each chunk gradient is freed as soon as it is copied
            grad[:, n] = chunk_grads.pop(0)
    return dense(*grads, d_state)


@delta_rule_chunks_backward.register_fake
def _(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    inverse: Tensor,
    starts: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (q, k, v, beta, d_final))


def _delta_rule_backward(
    ctx: Any, d_out: Tensor | None, d_final: Tensor | None, *_: None
) -> tuple[Tensor, ...]:
    return delta_rule_chunks_backward(*ctx.saved_tensors, *_output_gradients(ctx, d_out, d_final))


delta_rule_chunks.register_autograd(_delta_rule_backward, setup_context=_save_inputs_and_residuals)


def delta_chunk_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    inverse: Tensor,
    start: Tensor,
    d_out: Tensor,
    d_next: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``dQ, dK, dV, dβ, dS`` of one delta-rule chunk (contiguous: fast batched products).

    One chunk of every head: q, k ``[G, C, d]``, v ``[G, C, d_v]``, beta ``[G, C]``, inverse ``T``
    ``[G, C, C]``, start ``S`` and ``dS'`` (d_next, the gradient of the state after the chunk)
    ``[G, d, d_v]``, d_out ``[G, C, d_v]``. Forward: ``X = V − K S``, ``U = T diag(β) X``,
    ``O = Q S + P U`` with ``P = tril(Q Kᵀ)``, ``S' = S + Kᵀ U``, ``T = A⁻¹``,
    ``A = I + tril(diag(β) K Kᵀ, −1)``. Backward, with ``E = Tᵀ dU`` and ``L = tril(E Uᵀ, −1) = −dA``:
    ``dU = Pᵀ dO + K dS'``; ``dP = tril(dO Uᵀ)``; ``dQ = dO Sᵀ + dP K``;
    ``dK = dPᵀ Q + U dS'ᵀ − β E Sᵀ − β (L K) − Lᵀ diag(β) K``; ``dV = β E``;
    ``dβ = rowsum(X ⊙ E) − rowsum(K ⊙ L K)``; ``dS = dS' + Qᵀ dO − Kᵀ diag(β) E``.
    """
    residuals, pseudo_values = delta_chunk_values(k, v, beta, inverse, start)
    beta = beta.unsqueeze(-1)
    d_pseudo = torch.bmm(k, d_next).baddbmm_(transpose(causal_scores(q, k)), d_out)
    d_residuals = transpose(inverse) @ d_pseudo
    del d_pseudo  # temporaries are released as soon as possible: they set the peak memory
    d_v = beta * d_residuals
    d_beta = (residuals * d_residuals).sum(-1)
    del residuals
    d_scores = (d_out @ transpose(pseudo_values)).tril_()
    d_q = torch.bmm(d_out, transpose(start)).baddbmm_(d_scores, k)
    d_k = torch.bmm(transpose(d_scores), q).baddbmm_(pseudo_values, transpose(d_next))
    del d_scores
    lower = (d_residuals @ transpose(pseudo_values)).tril_(diagonal=-1)
    lower_keys = lower @ k
    d_k.baddbmm_(d_v, transpose(start), alpha=-1).addcmul_(beta, lower_keys, value=-1)
    d_k.baddbmm_(transpose(lower), beta * k, alpha=-1)
    d_beta.sub_((k * lower_keys).sum(-1))
    d_start = torch.baddbmm(d_next, transpose(q), d_out).baddbmm_(transpose(k), d_v, alpha=-1)
    return d_q, d_k, d_v, d_beta, d_start


def chunk_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    chunk_size: int,
) -> tuple[Tensor, FastWeightState]:
    """The recurrence of ``fwp.ops.reference`` computed chunkwise (``Backend`` of ``fwp.ops.dispatch``).

    q, k: ``[B, H, T, d_dot]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (delta rule) or None;
    state: ``W`` ``[B, H, d_dot, d_v]``. The chunk length is ``min(chunk_size, T)``. Returns the
    numerator ``y_t = q_t W_t``: ``[B, H, T, d_v]`` and the final ``W``.
    """
    B, H, T, d_dot = q.shape
    d_v = v.shape[-1]
    size = max(1, min(chunk_size, T))
    chunked = (split_chunks(q, size), split_chunks(k, size), split_chunks(v, size))
    initial = state.W.reshape(B * H, d_dot, d_v)
    if rule == "delta":
        out, final, *_ = delta_rule_chunks(*chunked, split_beta_chunks(beta, size), initial)
    else:
        out, final, _ = sum_rule_chunks(*chunked, initial)
    return merge_chunks(out, B, H, T), FastWeightState(final.view(B, H, d_dot, d_v))
