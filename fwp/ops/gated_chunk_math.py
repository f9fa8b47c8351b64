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

Chunked tensors are ``[G, N, C, D]`` (``G = B H``, as in ``fwp.ops.chunk_math``). Forward and
backward go through the chunks one at a time, each step on one chunk of every head (``[G, C, D]``),
whose temporaries fit in the cache; ``Γ`` is formed once, for all chunks, and kept for the backward.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """``O = diag(γ) Q S + P values`` (values ``V`` or ``U``): q, k ``[G, C, d]``, values ``[G, C, d_v]``,
    start ``S`` ``[G, d, d_v]`` → ``[G, C, d_v]``."""
    return torch.bmm(gated_scores(q, k, decay), values).baddbmm_(scaled_rows(q, decay.from_start), start)


def gated_state_write(k: Tensor, values: Tensor, decay: ChunkDecay, state: Tensor) -> Tensor:
    """``S' = γ_C S + (diag(λ) K)ᵀ values``: k ``[G, C, d]``, values ``[G, C, d_v]``, state
    ``[G, d, d_v]``."""
    return torch.baddbmm(per_matrix(decay.total) * state, transpose(scaled_rows(k, decay.to_end)), values)


def gated_sum_rule_forward(
    q: Tensor, k: Tensor, v: Tensor, decay: ChunkDecay, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The gated sum rule over chunks, one chunk of every head at a time (its temporaries stay in the
    cache): ``O_n = diag(γ) Q_n S_n + P_n V_n``, ``S_{n+1} = γ_C S_n + (diag(λ) K_n)ᵀ V_n``.

    q, k ``[G, N, C, d]``; v ``[G, N, C, d_v]``; initial ``S_0`` ``[G, d, d_v]``. Returns the outputs
    ``[G, N, C, d_v]``, ``S_N`` and the states before every chunk ``[G, N, d, d_v]``."""
    G, chunks, _, d = k.shape
    out, starts, state = v.new_empty(v.shape), initial.new_empty(G, chunks, d, initial.shape[-1]), initial
    for n in range(chunks):
        chunk = decay.chunk(n)
        out[:, n] = gated_chunk_read(q[:, n], k[:, n], v[:, n], chunk, state)
        starts[:, n] = state
        state = gated_state_write(k[:, n], v[:, n], chunk, state)
    return out, state, starts


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
        state = gated_state_write(keys, pseudo_values, chunk, state)
    return out, state, inverse, starts


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


def read_write_backward(
    q: Tensor, k: Tensor, values: Tensor, decay: ChunkDecay, start: Tensor, d_out: Tensor, d_next: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, d values`` of one chunk's read ``O = diag(γ) Q S + P values`` (``P = Q Kᵀ ⊙ Γ``) and
    write ``S' = γ_C S + (diag(λ) K)ᵀ values`` (module docstring), and ``diag(γ) dO`` (it also serves
    ``dS``): q, k ``[G, C, d]``, values, d_out ``[G, C, d_v]``, start ``S`` and d_next ``dS'``
    ``[G, d, d_v]``. ``Γ`` (0 above the diagonal) masks ``dP`` on its own."""
    decayed_d_out = scaled_rows(d_out, decay.from_start)
    d_values = torch.bmm(scaled_rows(k, decay.to_end), d_next).baddbmm_(
        transpose(gated_scores(q, k, decay)), d_out
    )
    d_scores = (d_out @ transpose(values)).mul_(decay.within)
    d_q = torch.bmm(decayed_d_out, transpose(start)).baddbmm_(d_scores, k)
    d_k = torch.bmm(transpose(d_scores), q).baddbmm_(scaled_rows(values, decay.to_end), transpose(d_next))
    return d_q, d_k, d_values, decayed_d_out


def state_backward(q: Tensor, decayed_d_out: Tensor, decay: ChunkDecay, d_next: Tensor) -> Tensor:
    """The read's and the decay's part of ``dS``: ``γ_C dS' + Qᵀ diag(γ) dO`` (shapes as
    ``read_write_backward``)."""
    return torch.baddbmm(per_matrix(decay.total) * d_next, transpose(q), decayed_d_out)


def gated_sum_chunk_backward(
    q: Tensor, k: Tensor, v: Tensor, decay: ChunkDecay, start: Tensor, d_out: Tensor, d_next: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dQ, dK, dV, dS`` of one gated sum-rule chunk of every head (shapes as ``read_write_backward``)."""
    d_q, d_k, d_v, decayed_d_out = read_write_backward(q, k, v, decay, start, d_out, d_next)
    return d_q, d_k, d_v, state_backward(q, decayed_d_out, decay, d_next)


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
    inverse ``T`` ``[G, C, C]``, start ``S`` and d_next ``dS'`` ``[G, d, d_v]``."""
    b = beta.unsqueeze(-1)
    decayed_keys = scaled_rows(k, decay.from_start)
    residuals, pseudo_values = delta_chunk_values(decayed_keys, v, beta, inverse, start)
    d_q, d_k, d_pseudo, decayed_d_out = read_write_backward(q, k, pseudo_values, decay, start, d_out, d_next)
    d_residuals = transpose(inverse) @ d_pseudo
    del d_pseudo  # temporaries are released as soon as possible
    d_v = b * d_residuals
    d_beta = torch.linalg.vecdot(residuals, d_residuals)
    del residuals
    d_k.baddbmm_(scaled_rows(d_v, decay.from_start), transpose(start), alpha=-1)
    lower = (d_residuals @ transpose(pseudo_values)).tril_(diagonal=-1).mul_(decay.within)
    lower_keys = lower @ k
    d_k.addcmul_(b, lower_keys, value=-1).baddbmm_(transpose(lower), b * k, alpha=-1)
    d_beta.sub_(torch.linalg.vecdot(k, lower_keys))
    d_start = state_backward(q, decayed_d_out, decay, d_next).baddbmm_(transpose(decayed_keys), d_v, alpha=-1)
    return d_q, d_k, d_v, d_beta, d_start


def gated_chunks_backward(
    chunk_backward: Callable[..., tuple[Tensor, ...]],
    inputs: tuple[Tensor, ...],
    residuals: tuple[Tensor, ...],
    decay: ChunkDecay,
    d_out: Tensor,
    d_final: Tensor,
) -> tuple[Tensor, ...]:
    """The gradients of a gated rule over chunks: the chunks in reverse, one chunk of every head at a time,
    ``chunk_backward(*inputs_n, decay_n, *residuals_n, dO_n, dS_{n+1}) → (*input gradients, dS_n)``
    (``gated_sum_chunk_backward`` on inputs q, k, v and residuals the chunk-start states;
    ``gated_delta_chunk_backward`` on q, k, v, β and ``T``, the states). Every tensor is ``[G, N, …]``,
    d_final ``dS_N`` ``[G, d, d_v]``. Returns the gradient of each input, ``∂L/∂G`` ``[G, N, C]``
    (``cumulative_decay_gradient``) and ``dS_0``."""
    q, _, v, *_ = inputs
    grads = [x.new_empty(x.shape) for x in inputs] + [decay.from_start.new_empty(decay.from_start.shape)]
    d_state = d_final
    for n in reversed(range(q.shape[1])):
        chunk = [x[:, n] for x in (*inputs, *residuals, d_out)]
        *chunk_grads, d_state = chunk_backward(
            *chunk[: len(inputs)], decay.chunk(n), *chunk[len(inputs) :], d_state
        )
        chunk_grads.append(cumulative_decay_gradient(q[:, n], chunk_grads[0], v[:, n], chunk_grads[2]))
        for grad, chunk_grad in zip(grads, chunk_grads, strict=True):
            grad[:, n] = chunk_grad
    return *grads, d_state
