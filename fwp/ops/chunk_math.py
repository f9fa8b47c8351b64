"""Forward pieces of the chunkwise-parallel fast-weight recurrence (Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length"), written with plain tensor operations.

Row vectors, state ``S``: ``[d, d_v]`` (``d = d_dot``). A sequence of ``T = N C`` steps is cut into
``N`` chunks of ``C`` steps; ``Q, K``: ``[C, d]``, ``V``: ``[C, d_v]``, ``β``: ``[C]`` are one chunk,
``S_n`` is the state before chunk ``n`` and ``P = tril(Q Kᵀ)`` (diagonal kept) its causal scores.

- sum rule:   ``O_n = Q S_n + P V``;  ``S_{n+1} = S_n + Kᵀ V``.
- delta rule: the pseudo-values ``U`` solve ``(I + tril(diag(β) K Kᵀ, −1)) U = diag(β)(V − K S_n)``;
  ``O_n = Q S_n + P U``;  ``S_{n+1} = S_n + Kᵀ U``. ``A = I + tril(diag(β) K Kᵀ, −1)`` does not depend
  on the state: its inverse ``T = A⁻¹`` (the UT transform of the WY form) is formed for all chunks at
  once, and the scan only multiplies, ``U = T diag(β)(V − K S_n)``.

Tensors are ``[G, N, C, D]`` with ``G = B H``; everything is batched over all chunks except the
``N``-step state scans. They are plain differentiable operations (the scans iterate over ``unbind``
so that autograd, in ``bench/plain_chunk.py``, stacks their gradients once instead of per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def split_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """``[B, H, T, D]`` → ``[B H, N, C, D]`` with ``N = ⌈T / C⌉``, zero-padded at the end of ``T``.

    Zero keys write nothing (either rule) and zero β keeps the memory, so padding never changes the
    state; the padded outputs are cut off by ``merge_chunks``.
    """
    B, H, T, D = x.shape
    pad = -T % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(B * H, -1, chunk_size, D)


def split_beta_chunks(beta: Tensor, chunk_size: int) -> Tensor:
    """``[B, H, T]`` → ``[B H, N, C]``, zero-padded like ``split_chunks``."""
    return split_chunks(beta.unsqueeze(-1), chunk_size).squeeze(-1)


def merge_chunks(x: Tensor, batch: int, heads: int, length: int) -> Tensor:
    """``[B H, N, C, D]`` → ``[B, H, T, D]``, dropping the padding past ``length`` (if any: a no-op
    slice would make autograd copy the incoming gradient)."""
    merged = x.reshape(batch, heads, -1, x.shape[-1])
    return merged[:, :, :length] if merged.shape[2] > length else merged


def transpose(x: Tensor) -> Tensor:
    """Swap the two last dimensions."""
    return x.transpose(-1, -2)


def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    """``P = tril(Q Kᵀ)``: ``[G, N, C, C]``, query ``i`` reads the keys ``j ≤ i`` of its chunk."""
    return (q @ transpose(k)).tril_()


def add_product_(acc: Tensor, a: Tensor, b: Tensor, *, alpha: float = 1.0) -> Tensor:
    """``acc ← acc + alpha · a b`` in place for ``[G, N, m, n]`` stacks of matrices (one fused batched
    product); ``acc`` must be contiguous (a fresh product) and is returned."""
    acc.view(-1, *acc.shape[-2:]).baddbmm_(a.flatten(0, 1), b.flatten(0, 1), alpha=alpha)
    return acc


def wy_inverse(scaled_keys: Tensor, k: Tensor) -> Tensor:
    """``T = A⁻¹`` with ``A = I + tril(diag(β) K Kᵀ, −1)``, for all chunks at once (``unit_lower_inverse``).
    scaled_keys ``diag(β) K`` and k: ``[G, N, C, d]``; returns ``[G, N, C, C]``."""
    return unit_lower_inverse((scaled_keys @ transpose(k)).tril_(diagonal=-1))


def unit_lower_inverse(strictly_lower: Tensor) -> Tensor:
    """``(I + L)⁻¹`` for strictly lower triangular ``L`` ``[…, C, C]`` by one batched unit-triangular
    solve against the identity; unit lower triangular, row-major: solved as ``((I + L)ᵀ)⁻¹ᵀ``, because
    LAPACK returns column-major solutions."""
    identity = torch.eye(strictly_lower.shape[-1], dtype=strictly_lower.dtype, device=strictly_lower.device)
    upper = transpose(strictly_lower)
    return transpose(
        torch.linalg.solve_triangular(upper, identity.expand_as(upper), upper=True, unitriangular=True)
    )


def delta_chunk_values(
    k: Tensor, v: Tensor, beta: Tensor, inverse: Tensor, start: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk's residuals ``X = V − K S`` and pseudo-values ``U = T diag(β) X``: k ``[G, C, d]``,
    v ``[G, C, d_v]``, beta ``[G, C]``, inverse ``T`` ``[G, C, C]``, start ``S`` ``[G, d, d_v]``."""
    residuals = torch.baddbmm(v, k, start, alpha=-1)
    return residuals, inverse @ (beta.unsqueeze(-1) * residuals)


def delta_rule_scan(
    k: Tensor, v: Tensor, beta: Tensor, inverse: Tensor, initial: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The delta rule's state recurrence over chunks: ``U_n = T_n diag(β_n) (V_n − K_n S_n)``,
    ``S_{n+1} = S_n + K_nᵀ U_n``.

    k: ``[G, N, C, d]``; v: ``[G, N, C, d_v]``; beta: ``[G, N, C]``; inverse ``T``: ``[G, N, C, C]``;
    initial ``S_0``: ``[G, d, d_v]``. Returns the pseudo-values ``U`` ``[G, N, C, d_v]``, the states
    before every chunk ``[G, N, d, d_v]`` and the final state ``[G, d, d_v]``.
    """
    state, starts, pseudo_values = initial, [], []
    chunks = zip(k.unbind(1), v.unbind(1), beta.unbind(1), inverse.unbind(1), strict=True)
    for keys, values, betas, inverse_n in chunks:
        starts.append(state)
        pseudo_values.append(delta_chunk_values(keys, values, betas, inverse_n, state)[1])
        state = torch.baddbmm(state, transpose(keys), pseudo_values[-1])
    return torch.stack(pseudo_values, dim=1), torch.stack(starts, dim=1), state


def running_sum(increments: Tensor, initial: Tensor) -> tuple[Tensor, Tensor]:
    """Partial sums ``S_n = S_0 + Σ_{m<n} x_m``: ``[G, N, …]`` for ``n < N``, and ``S_N``; increments
    ``x``: ``[G, N, …]``, initial ``S_0``: ``[G, …]``."""
    state, starts = initial, []
    for increment in increments.unbind(1):
        starts.append(state)
        state = state + increment
    return torch.stack(starts, dim=1), state


def sum_rule_states(k: Tensor, v: Tensor, initial: Tensor) -> tuple[Tensor, Tensor]:
    """``S_n = S_0 + Σ_{m<n} K_mᵀ V_m``: the states before every chunk ``[G, N, d, d_v]`` and ``S_N``."""
    return running_sum(transpose(k) @ v, initial)


def chunk_read(q: Tensor, scores: Tensor, values: Tensor, starts: Tensor) -> Tensor:
    """``O_n = Q S_n + P values`` (values: ``V`` for the sum rule, ``U`` for the delta rule):
    ``[G, N, C, d_v]``; starts: the states before every chunk, ``[G, N, d, d_v]``."""
    return add_product_(scores @ values, q, starts)
