"""The ``chunk`` backend: the chunkwise-parallel fast-weight recurrence with a hand-written backward.

The sequence is cut into chunks of ``C`` steps (zero-padded at the end); inside a chunk everything is
a matrix product (``fwp.ops.chunk_math``), between chunks only the state ``S`` ``[d, d_v]`` is carried.
The autograd functions keep their inputs, the ``N`` chunk-start states and (delta rule) the
pseudo-values ``U`` and the per-chunk inverse ``T``; no per-step state is ever stored. The backward
runs the adjoint scan over the chunks in reverse, recomputes the cheap products (``P``, ``W_k``) and
forms every other gradient for all chunks at once. The Katharopoulos denominator is applied outside,
with plain autograd.

Gradients, per chunk with start state ``S``, the gradient ``dS'`` of the state after it, values ``U``
(``V`` for the sum rule) and ``P = tril(Q Kᵀ)``, from ``O = Q S + P U`` and ``S' = S + Kᵀ U``:
``dS = dS' + Qᵀ dO (− W_kᵀ dU)``; ``dU = Pᵀ dO + K dS'``; ``dQ = dO Sᵀ + tril(dO Uᵀ) K``;
``dK ∋ tril(dO Uᵀ)ᵀ Q + U dS'ᵀ``. Delta rule only, through ``U = U_0 − W_k S`` and
``[W_k | U_0] = T R``, ``R = [diag(β) K | diag(β) V]``, ``T = A⁻¹``: with ``E = Tᵀ dU``,
``dR = [−E Sᵀ | E]`` and ``dA = −tril(E Uᵀ, −1)`` (as ``U_0 − W_k S = U``), then through
``A = I + tril(diag(β) K Kᵀ, −1)`` and ``R``: ``dV = β E``,
``dK ∋ β (dA K − E Sᵀ) + dAᵀ diag(β) K``, ``dβ = rowsum(K ⊙ (dA K − E Sᵀ)) + rowsum(V ⊙ E)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fwp.ops.chunk_math import (
    add_product_,
    causal_scores,
    chunk_read,
    delta_rule_scan,
    merge_chunks,
    split_beta_chunks,
    split_chunks,
    sum_rule_states,
    transpose,
    wy_representation,
)
from fwp.ops.normalization import causal_denominator
from fwp.ops.state import FastWeightState


def read_gradients(
    q: Tensor, k: Tensor, values: Tensor, starts: Tensor, d_out: Tensor
) -> tuple[Tensor, Tensor]:
    """``dQ = dO Sᵀ + tril(dO Uᵀ) K`` and the read's part of ``dK``, ``tril(dO Uᵀ)ᵀ Q``, of
    ``O = Q S + tril(Q Kᵀ) U`` (values ``U``, start states ``S``); both ``[G, N, C, d]``."""
    d_scores = (d_out @ transpose(values)).tril_()
    d_q = add_product_(d_out @ transpose(starts), d_scores, k)
    return d_q, transpose(d_scores) @ q


def adjoint_scan_(
    q: Tensor,
    k: Tensor,
    values: Tensor,
    d_out: Tensor,
    d_final: Tensor,
    d_values: Tensor,
    d_k: Tensor,
    wy_keys: Tensor | None = None,
) -> Tensor:
    """The state gradients, chunks in reverse, with ``dS'`` that of the state after chunk ``n``
    (``dS_N`` = d_final) and ``S' = S + Kᵀ U`` (``U`` = values): ``dS_n = dS' + Q_nᵀ dO_n``, minus
    ``W_kᵀ dU_n`` for the delta rule (``U = U_0 − W_k S``, wy_keys given); in place, ``dU_n += K_n dS'``
    (d_values holds ``Pᵀ dO`` on entry) and ``dK_n += U_n dS'ᵀ``. q, k ``[G, N, C, d]``; values,
    d_out, d_values ``[G, N, C, d_v]``. Returns ``dS_0`` ``[G, d, d_v]``."""
    G, chunks, _, d = q.shape
    d_next = d_final.new_empty(G, chunks, d, d_final.shape[-1])
    d_state = d_final
    for n in reversed(range(chunks)):
        d_next[:, n] = d_state
        update = torch.baddbmm(d_state, transpose(q[:, n]), d_out[:, n])
        if wy_keys is not None:
            d_pseudo = torch.baddbmm(d_values[:, n], k[:, n], d_state)
            d_values[:, n] = d_pseudo
            update.baddbmm_(transpose(wy_keys[:, n]), d_pseudo, alpha=-1)
        d_state = update
    if wy_keys is None:
        add_product_(d_values, k, d_next)
    add_product_(d_k, values, transpose(d_next))
    return d_state


class SumRuleChunks(torch.autograd.Function):
    """Sum rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, initial ``[G, d, d_v]``
    → outputs ``[G, N, C, d_v]`` and the final state ``[G, d, d_v]``."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, initial: Tensor) -> tuple[Tensor, Tensor]:
        starts, final = sum_rule_states(k, v, initial)
        ctx.save_for_backward(q, k, v, starts)
        return chunk_read(q, causal_scores(q, k), v, starts), final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_final: Tensor) -> tuple[Tensor, ...]:
        q, k, v, starts = ctx.saved_tensors
        d_out = d_out.contiguous()
        d_q, d_k = read_gradients(q, k, v, starts, d_out)
        d_v = transpose(causal_scores(q, k)) @ d_out
        d_initial = adjoint_scan_(q, k, v, d_out, d_final, d_v, d_k)
        return d_q, d_k, d_v, d_initial


class DeltaRuleChunks(torch.autograd.Function):
    """Delta rule over chunked inputs: q, k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, beta ``[G, N, C]``,
    initial ``[G, d, d_v]`` → outputs ``[G, N, C, d_v]`` and the final state ``[G, d, d_v]``."""

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial: Tensor
    ) -> tuple[Tensor, Tensor]:
        wy = wy_representation(k, v, beta)
        pseudo_values, starts, final = delta_rule_scan(k, wy, initial)
        ctx.save_for_backward(q, k, v, beta, wy.inverse, pseudo_values, starts)
        return chunk_read(q, causal_scores(q, k), pseudo_values, starts), final

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_final: Tensor) -> tuple[Tensor, ...]:
        q, k, v, beta, inverse, pseudo_values, starts = ctx.saved_tensors
        d_out = d_out.contiguous()
        beta_column = beta.unsqueeze(-1)
        d_q, d_k = read_gradients(q, k, pseudo_values, starts, d_out)
        d_pseudo = transpose(causal_scores(q, k)) @ d_out
        wy_keys = inverse @ (beta_column * k)
        d_initial = adjoint_scan_(q, k, pseudo_values, d_out, d_final, d_pseudo, d_k, wy_keys)
        # Through U = U_0 − W_k S and [W_k | U_0] = T R (module docstring), E = d_scaled_values;
        # intermediates are released or updated in place as early as possible: this sets the peak memory.
        del wy_keys
        d_scaled_values = transpose(inverse) @ d_pseudo
        del d_pseudo
        d_lower = (d_scaled_values @ transpose(pseudo_values)).tril_(diagonal=-1).neg_()
        key_terms = add_product_(d_lower @ k, d_scaled_values, transpose(starts), alpha=-1)
        add_product_(d_k, transpose(d_lower.mul_(beta_column)), k)
        del d_lower
        d_k.addcmul_(beta_column, key_terms)
        d_beta = key_terms.mul_(k).sum(-1) + (v * d_scaled_values).sum(-1)
        return d_q, d_k, d_scaled_values.mul_(beta_column), d_beta, d_initial


def chunk_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    denominator: bool,
    eps: float,
    chunk_size: int,
) -> tuple[Tensor, FastWeightState]:
    """The recurrence of ``fwp.ops.reference`` computed chunkwise (backend signature of ``fwp.ops.dispatch``).

    q, k: ``[B, H, T, d_dot]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (delta rule) or None;
    state: ``W`` ``[B, H, d_dot, d_v]`` (+ ``z`` ``[B, H, d_dot]`` with the denominator).
    The chunk length is ``min(chunk_size, T)``. Returns ``y``: ``[B, H, T, d_v]`` and the final state.
    """
    B, H, T, d_dot = q.shape
    d_v = v.shape[-1]
    size = max(1, min(chunk_size, T))
    chunked = (split_chunks(q, size), split_chunks(k, size), split_chunks(v, size))
    initial = state.W.reshape(B * H, d_dot, d_v)
    if rule == "delta":
        out, final = DeltaRuleChunks.apply(*chunked, split_beta_chunks(beta, size), initial)
    else:
        out, final = SumRuleChunks.apply(*chunked, initial)
    y = merge_chunks(out, B, H, T)
    z = state.z
    if denominator:
        den, z = causal_denominator(q, k, state.z)
        y = y / (den + eps).unsqueeze(-1)
    return y, FastWeightState(final.view(B, H, d_dot, d_v), z)
