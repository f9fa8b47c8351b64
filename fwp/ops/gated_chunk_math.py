"""Forward and backward pieces of the chunkwise gated sum and delta rules (Yang, Kautz & Hatamizadeh,
"Gated Delta Networks", ICLR 2025, chunk form), written with plain tensor operations.

Row vectors, one chunk of ``C`` steps: ``Q, K`` ``[C, d]``, ``V`` ``[C, d_v]``, ``β`` ``[C]``, the
state ``S`` ``[d, d_v]`` before the chunk, log-decays ``a`` ``[C]`` and their cumulative sums inside
the chunk ``g_i = Σ_{j≤i} a_j``. The decay pieces (``ChunkDecay``), all ``≤ 1``:
``Γ_ij = exp(g_i − g_j)`` for ``i ≥ j`` (0 above the diagonal; the exponents are clamped to ``≤ 0``
before ``exp`` and the positive ones, above the diagonal, zeroed after it, so no positive number is
ever exponentiated), ``γ_i = exp(g_i)`` (chunk start → step ``i``),
``λ_j = exp(g_C − g_j)`` (step ``j`` → chunk end) and ``γ_C``. With ``P = tril(Q Kᵀ) ⊙ Γ``:

- gated sum rule:   ``O = diag(γ) Q S + P V``;  ``S' = γ_C S + (diag(λ) K)ᵀ V``.
- gated delta rule: pseudo-values ``U = T diag(β) X`` with residuals ``X = V − diag(γ) K S``,
  ``T = A⁻¹``, ``A = I + diag(β) M``, ``M = tril(K Kᵀ ⊙ Γ, −1)``;
  ``O = diag(γ) Q S + P U``;  ``S' = γ_C S + (diag(λ) K)ᵀ U``.

With every ``a = 0`` all decay pieces are exactly 1 (0 above the diagonal) and these are the ungated
forms of ``fwp.ops.chunk_math``, evaluated in the same order (the same floating-point results).

Backward (``dS'`` the gradient of the state after the chunk): ``dU = Pᵀ dO + diag(λ) K dS'``;
``dP = tril(dO Uᵀ) ⊙ Γ``; ``dQ = diag(γ) dO Sᵀ + dP K``; ``dK = dPᵀ Q + diag(λ) U dS'ᵀ`` (+ for the
delta rule, with ``E = Tᵀ dU``, ``L = tril(E Uᵀ, −1) ⊙ Γ``: ``− diag(γ) dV Sᵀ − diag(β) L K
− Lᵀ diag(β) K``); ``dV = diag(β) E``; ``dβ = rowsum(X ⊙ E) − rowsum(K ⊙ L K)``;
``dS = γ_C dS' + (diag(γ) Q)ᵀ dO − (diag(γ) K)ᵀ dV``.

Log-decays, without differentiating the decay pieces: with ``G_t`` the cumulative log-decay over the
whole sequence, ``W̃_t = exp(−G_t) W_t`` follows the ungated rule on ``exp(−G_t) v_t`` (the keys of
the delta rule's transition are unscaled) and ``y_t = exp(G_t) q_t W̃_t``, ``W_T = exp(G_T) W̃_T``.
So ``∂L/∂G_t = q_t · dq_t − v_t · dv_t`` (+ ``⟨W_T, dW_T⟩`` at ``t = T``), from the gradients of the
inputs themselves, and ``da_s = Σ_{t≥s} ∂L/∂G_t`` (``log_decay_gradient``).

Chunked tensors are ``[G, N, C, D]`` (``G = B H``, as in ``fwp.ops.chunk_math``); the backward
helpers take one batch dimension, ``[b, C, D]`` (one chunk of every head, or all chunks flattened).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fwp.ops.chunk_math import delta_chunk_values, transpose, unit_lower_inverse


@dataclass(frozen=True)
class ChunkDecay:
    """The decay pieces of chunks (module docstring): within ``Γ`` ``[…, C, C]``, from_start ``γ``
    ``[…, C]``, to_end ``λ`` ``[…, C]``."""

    within: Tensor
    from_start: Tensor
    to_end: Tensor

    @classmethod
    def of(cls, log_decay: Tensor, within: Tensor | None = None) -> ChunkDecay:
        """The pieces of chunked log-decays ``a`` ``[…, C]`` (every value finite and ``≤ 0``); ``within``,
        if given, is their ``Γ`` (the forward's, kept for the backward: the largest piece to form)."""
        g = log_decay.cumsum(-1)
        if within is None:  # clamped, not masked with −inf: exp(−inf) takes a slow path on CPU (5×)
            within = (g.unsqueeze(-1) - g.unsqueeze(-2)).clamp_(max=0).exp_().tril_()
        return cls(within, g.exp(), (g[..., -1:] - g).exp())

    @property
    def total(self) -> Tensor:
        """``γ_C``: the decay over the whole chunk, ``[…]``."""
        return self.from_start[..., -1]

    def chunk(self, n: int) -> ChunkDecay:
        """Chunk ``n`` of ``[G, N, …]`` pieces."""
        return ChunkDecay(self.within[:, n], self.from_start[:, n], self.to_end[:, n])

    def flatten(self) -> ChunkDecay:
        """``[G, N, …]`` pieces as ``[G N, …]``."""
        return ChunkDecay(self.within.flatten(0, 1), self.from_start.flatten(0, 1), self.to_end.flatten(0, 1))


def scaled_rows(x: Tensor, scale: Tensor) -> Tensor:
    """``diag(scale) x``: row ``i`` of ``x`` ``[…, C, D]`` times ``scale[…, i]``."""
    return scale.unsqueeze(-1) * x


def per_matrix(scale: Tensor) -> Tensor:
    """``[…]`` → ``[…, 1, 1]``: one factor per matrix of a stack."""
    return scale[..., None, None]


def gated_scores(q: Tensor, k: Tensor, decay: ChunkDecay) -> Tensor:
    """``P = tril(Q Kᵀ) ⊙ Γ = Q Kᵀ ⊙ Γ`` (``Γ`` is 0 above the diagonal): ``[…, C, C]``."""
    return (q @ transpose(k)).mul_(decay.within)


def gated_chunk_read(q: Tensor, k: Tensor, values: Tensor, decay: ChunkDecay, start: Tensor) -> Tensor:
    """``O = diag(γ) Q S + P values`` (values ``V`` or ``U``): q, k ``[b, C, d]``, values ``[b, C, d_v]``,
    start ``S`` ``[b, d, d_v]`` → ``[b, C, d_v]``."""
    return torch.bmm(gated_scores(q, k, decay), values).baddbmm_(scaled_rows(q, decay.from_start), start)


def gated_sum_rule_states(k: Tensor, v: Tensor, decay: ChunkDecay, initial: Tensor) -> tuple[Tensor, Tensor]:
    """``S_{n+1} = γ_C S_n + (diag(λ) K_n)ᵀ V_n``: the states before every chunk ``S_0 … S_{N−1}``
    ``[G, N, d, d_v]`` and ``S_N``; k ``[G, N, C, d]``, v ``[G, N, C, d_v]``, initial ``S_0``
    ``[G, d, d_v]``."""
    increments = transpose(scaled_rows(k, decay.to_end)) @ v
    state, starts = initial, []
    for increment, total in zip(increments.unbind(1), decay.total.unbind(1), strict=True):
        starts.append(state)
        state = torch.addcmul(increment, per_matrix(total), state)
    return torch.stack(starts, dim=1), state


def gated_wy_inverse(k: Tensor, beta: Tensor, decay: ChunkDecay) -> Tensor:
    """``T = A⁻¹``, ``A = I + tril(diag(β) K Kᵀ ⊙ Γ, −1)``: k ``[…, C, d]``, beta ``[…, C]`` →
    ``[…, C, C]``."""
    return unit_lower_inverse((scaled_rows(k, beta) @ transpose(k)).mul_(decay.within).tril_(diagonal=-1))


def gated_delta_rule_forward(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, decay: ChunkDecay, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gated delta rule over chunks, one chunk of every head at a time (its temporaries stay in the
    cache): ``T_n = A_n⁻¹`` (``gated_wy_inverse``), ``U_n = T_n diag(β_n)(V_n − diag(γ) K_n S_n)``,
    ``O_n = diag(γ) Q_n S_n + P_n U_n``, ``S_{n+1} = γ_C S_n + (diag(λ) K_n)ᵀ U_n``.

    q, k ``[G, N, C, d]``; v ``[G, N, C, d_v]``; beta ``[G, N, C]``; initial ``S_0`` ``[G, d, d_v]``.
    Returns the outputs ``[G, N, C, d_v]``, ``S_N``, ``T`` ``[G, N, C, C]`` and the states before every
    chunk ``[G, N, d, d_v]``."""
    G, chunks, size, d = k.shape
    out, inverse = v.new_empty(v.shape), k.new_empty(G, chunks, size, size)
    starts, state = initial.new_empty(G, chunks, d, initial.shape[-1]), initial
    for n in range(chunks):
        chunk, keys = decay.chunk(n), k[:, n]
        inverse_n = gated_wy_inverse(keys, beta[:, n], chunk)
        decayed_keys = scaled_rows(keys, chunk.from_start)
        pseudo_values = delta_chunk_values(decayed_keys, v[:, n], beta[:, n], inverse_n, state)[1]
        out[:, n] = gated_chunk_read(q[:, n], keys, pseudo_values, chunk, state)
        inverse[:, n], starts[:, n] = inverse_n, state
        end_keys = scaled_rows(keys, chunk.to_end)
        state = torch.baddbmm(per_matrix(chunk.total) * state, transpose(end_keys), pseudo_values)
    return out, state, inverse, starts


def read_backward(
    q: Tensor, k: Tensor, values: Tensor, decay: ChunkDecay, start: Tensor, d_out: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``dQ, dK, d values`` of the read ``O = diag(γ) Q S + P values``, ``P = tril(Q Kᵀ) ⊙ Γ``: q, k
    ``[b, C, d]``, values and d_out ``[b, C, d_v]``, start ``S`` ``[b, d, d_v]``."""
    scores = gated_scores(q, k, decay)
    d_values = transpose(scores) @ d_out
    del scores
    d_scores = (d_out @ transpose(values)).tril_().mul_(decay.within)
    d_q = scaled_rows(torch.bmm(d_out, transpose(start)), decay.from_start).baddbmm_(d_scores, k)
    return d_q, transpose(d_scores) @ q, d_values


def write_backward_(
    d_k: Tensor, d_values: Tensor, k: Tensor, values: Tensor, decay: ChunkDecay, d_next: Tensor
) -> None:
    """Adds the state write ``S' = γ_C S + (diag(λ) K)ᵀ values`` to ``d_values`` and ``d_k`` in place
    (d_next ``dS'`` ``[b, d, d_v]``)."""
    d_values.baddbmm_(scaled_rows(k, decay.to_end), d_next)
    d_k.addcmul_(decay.to_end.unsqueeze(-1), values @ transpose(d_next))


def cumulative_decay_gradient(q: Tensor, d_q: Tensor, v: Tensor, d_v: Tensor) -> Tensor:
    """``∂L/∂G_t = q_t · dq_t − v_t · dv_t`` (module docstring) for q, d_q ``[…, C, d]`` and v, d_v
    ``[…, C, d_v]``: ``[…, C]``."""
    return torch.linalg.vecdot(q, d_q).sub_(torch.linalg.vecdot(v, d_v))


def log_decay_gradient(d_cumulative: Tensor, final: Tensor, d_final: Tensor) -> Tensor:
    """``da_s = Σ_{t≥s} ∂L/∂G_t`` along the whole (padded) sequence: d_cumulative ``[G, N, C]``
    (``cumulative_decay_gradient``) plus ``⟨W_T, dW_T⟩`` (final, d_final ``[G, d, d_v]``) at the last
    step → ``[G, N, C]``."""
    steps = d_cumulative.flatten(1)
    steps[:, -1] += (final * d_final).sum((-2, -1))
    return steps.flip(-1).cumsum(-1).flip(-1).view(d_cumulative.shape)


def gated_adjoint_scan(q: Tensor, d_out: Tensor, decay: ChunkDecay, d_final: Tensor) -> tuple[Tensor, Tensor]:
    """The gated sum rule's state gradients, chunks in reverse: ``dS_n = γ_C dS_{n+1} + (diag(γ) Q_n)ᵀ dO_n``
    from ``dS_N`` = d_final ``[G, d, d_v]``. Returns ``dS_{n+1}`` for every chunk ``[G, N, d, d_v]``
    and ``dS_0``."""
    decayed_queries = scaled_rows(q, decay.from_start)
    G, chunks, _, d = q.shape
    d_next = d_final.new_empty(G, chunks, d, d_final.shape[-1])
    d_state = d_final
    for n in reversed(range(chunks)):
        d_next[:, n] = d_state
        d_state = torch.baddbmm(
            per_matrix(decay.total[:, n]) * d_state, transpose(decayed_queries[:, n]), d_out[:, n]
        )
    return d_next, d_state


def gated_sum_rule_backward(
    q: Tensor, k: Tensor, v: Tensor, decay: ChunkDecay, starts: Tensor, d_out: Tensor, d_final: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dS_0`` of the gated sum rule over chunks (``[G, N, …]`` as in the forward): the
    adjoint scan, then every chunk at once."""
    d_next, d_initial = gated_adjoint_scan(q, d_out, decay, d_final)
    q_f, k_f, v_f, starts_f, d_out_f, d_next_f = (x.flatten(0, 1) for x in (q, k, v, starts, d_out, d_next))
    flat_decay = decay.flatten()
    d_q, d_k, d_v = read_backward(q_f, k_f, v_f, flat_decay, starts_f, d_out_f)
    write_backward_(d_k, d_v, k_f, v_f, flat_decay, d_next_f)
    return (*(x.view(*q.shape[:2], *x.shape[1:]) for x in (d_q, d_k, d_v)), d_initial)


def gated_delta_chunk_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: ChunkDecay,
    inverse: Tensor,
    start: Tensor,
    d_out: Tensor,
    d_next: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dβ, dS`` of one gated delta-rule chunk of every head (formulas in the module
    docstring), recomputing ``X`` and ``U``: q, k ``[G, C, d]``, v, d_out ``[G, C, d_v]``, beta ``[G, C]``,
    inverse ``T`` ``[G, C, C]``, start ``S`` and d_next ``dS'`` ``[G, d, d_v]``. ``diag(γ) dO`` serves both
    ``dQ`` and ``dS``; ``Γ`` (0 above the diagonal) masks ``dP`` on its own."""
    gamma, lam, b = (x.unsqueeze(-1) for x in (decay.from_start, decay.to_end, beta))
    decayed_keys = gamma * k
    residuals, pseudo_values = delta_chunk_values(decayed_keys, v, beta, inverse, start)
    d_pseudo = torch.bmm(lam * k, d_next).baddbmm_(transpose(gated_scores(q, k, decay)), d_out)
    d_residuals = transpose(inverse) @ d_pseudo
    del d_pseudo  # temporaries are released as soon as possible
    d_v = b * d_residuals
    d_beta = torch.linalg.vecdot(residuals, d_residuals)
    del residuals
    decayed_d_out = gamma * d_out
    d_scores = (d_out @ transpose(pseudo_values)).mul_(decay.within)
    d_q = torch.bmm(decayed_d_out, transpose(start)).baddbmm_(d_scores, k)
    d_k = torch.bmm(transpose(d_scores), q).baddbmm_(lam * pseudo_values, transpose(d_next))
    del d_scores
    d_k.baddbmm_(gamma * d_v, transpose(start), alpha=-1)
    lower = (d_residuals @ transpose(pseudo_values)).tril_(diagonal=-1).mul_(decay.within)
    lower_keys = lower @ k
    d_k.addcmul_(b, lower_keys, value=-1).baddbmm_(transpose(lower), b * k, alpha=-1)
    d_beta.sub_(torch.linalg.vecdot(k, lower_keys))
    d_start = torch.baddbmm(per_matrix(decay.total) * d_next, transpose(q), decayed_d_out)
    d_start.baddbmm_(transpose(decayed_keys), d_v, alpha=-1)
    return d_q, d_k, d_v, d_beta, d_start


def gated_delta_rule_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    decay: ChunkDecay,
    inverse: Tensor,
    starts: Tensor,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dβ`` ``[G, N, …]``, ``∂L/∂G`` ``[G, N, C]`` (``cumulative_decay_gradient``) and
    ``dS_0`` of the gated delta rule: the chunks in reverse, one chunk of every head at a time
    (``gated_delta_chunk_backward``). Shapes as ``gated_delta_rule_forward``; starts ``[G, N, d, d_v]``."""
    grads = [x.new_empty(x.shape) for x in (q, k, v, beta, beta)]
    d_state = d_final
    for n in reversed(range(q.shape[1])):
        chunk = [x[:, n] for x in (q, k, v, beta)]
        rest = [x[:, n] for x in (inverse, starts, d_out)]
        d_q, d_k, d_v, d_beta, d_state = gated_delta_chunk_backward(*chunk, decay.chunk(n), *rest, d_state)
        d_cumulative = cumulative_decay_gradient(chunk[0], d_q, chunk[2], d_v)
        for grad, chunk_grad in zip(grads, (d_q, d_k, d_v, d_beta, d_cumulative), strict=True):
            grad[:, n] = chunk_grad
    return *grads, d_state
