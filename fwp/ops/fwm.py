"""The Fast Weight Memory update rule of the synthetic retrieval experiments (Schlag, Munkhdalai &
Schmidhuber 2021, "Learning Associative Inference Using Fast Weight Memory", as run by the official
code of "Linear Transformers Are Secretly Fast Weight Programmers").

Per head, with features ``φ_t = φ(k_t)`` (not normalised), values ``v_t`` and ``β_t ∈ (0, 1)``:

    W_t = W_{t-1} + β_t φ_t^T (v_t − φ_t W_{t-1})        (the delta rule, W ``[d_dot, d_v]``)
    W_t ← W_t / max(1, ‖W_t‖_F)                          (except after a sequence's first write)

and a query reads ``y = LayerNorm(φ(q) W)`` over the ``d_v`` values, without affine parameters
(ε = 1e-5). The rescaling makes the rule non-linear in ``W``, so there is no chunkwise-parallel form:
this recurrence is the only implementation (and the oracle). Layout ``[B, H, T, D]``; state ``W``
``[B, H, d_dot, d_v]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fwp.ops.state import FastWeightState

LAYER_NORM_EPS = 1e-5


def fwm_read(phi_q: Tensor, W: Tensor) -> Tensor:
    """``LayerNorm(φ(q) W)`` over the last dimension: phi_q ``[B, H, T, d_dot]``, W ``[B, H, d_dot, d_v]``
    → ``[B, H, T, d_v]``."""
    y = phi_q @ W
    return F.layer_norm(y, y.shape[-1:], eps=LAYER_NORM_EPS)


def fwm_step(W: Tensor, phi_k: Tensor, v: Tensor, beta: Tensor, *, rescale: Tensor) -> Tensor:
    """One write: W ``[B, H, d_dot, d_v]``, phi_k ``[B, H, d_dot]``, v ``[B, H, d_v]``, beta ``[B, H]``;
    rescale ``[B]``: whether the rows' memories are rescaled after this write."""
    retrieved = (phi_k.unsqueeze(-2) @ W).squeeze(-2)
    W = W + phi_k.unsqueeze(-1) * (beta.unsqueeze(-1) * (v - retrieved)).unsqueeze(-2)
    norm = W.flatten(-2).norm(dim=-1).clamp(min=1.0)
    return W / torch.where(rescale[:, None], norm, torch.ones_like(norm))[..., None, None]


def fwm_recurrence(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    initial_state: FastWeightState | None = None,
    write_mask: Tensor | None = None,
) -> tuple[Tensor, FastWeightState]:
    """Write every step, then read it: phi_q, phi_k ``[B, H, T, d_dot]``, v ``[B, H, T, d_v]``, beta
    ``[B, H, T]``, write_mask ``[B, T]`` (False: the step writes nothing) → y ``[B, H, T, d_v]`` and the
    final state. Without ``initial_state`` the memory starts at 0 and a row's first write is not
    rescaled (as in the official code; with a write mask, its first unmasked write, so that left
    padding changes nothing); a carried state continues, rescaling every write."""
    B, H, T, d_dot = phi_k.shape
    if initial_state is None:
        W = phi_k.new_zeros(B, H, d_dot, v.shape[-1])
    else:
        W = initial_state.W.to(phi_k.dtype)
    written = torch.full((B,), initial_state is not None, dtype=torch.bool, device=phi_k.device)
    outputs = []
    for t in range(T):
        updated = fwm_step(W, phi_k[:, :, t], v[:, :, t], beta[:, :, t], rescale=written)
        if write_mask is None:
            W, written = updated, torch.ones_like(written)
        else:
            W = torch.where(write_mask[:, t, None, None, None], updated, W)
            written = written | write_mask[:, t]
        outputs.append(fwm_read(phi_q[:, :, t : t + 1], W))
    return torch.cat(outputs, dim=2), FastWeightState(W)
