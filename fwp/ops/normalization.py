"""Normalisations of fast-weight read-outs (docs/attention.md)."""

from __future__ import annotations

import torch
from torch import Tensor


def sum_normalize(phi: Tensor, eps: float = 0.0) -> Tensor:
    """``φ(x) ← φ(x) / (Σ_j φ(x)_j + ε)`` over the last dimension (keys and queries)."""
    return phi / (phi.sum(dim=-1, keepdim=True) + eps)


def causal_denominator(phi_q: Tensor, phi_k: Tensor, z0: Tensor | None) -> tuple[Tensor, Tensor]:
    """Katharopoulos' causal denominator for a whole sequence.

    ``z_i = z_0 + Σ_{j≤i} φ(k_j)`` and ``den_i = φ(q_i) · z_i``.
    phi_q, phi_k: ``[B, H, T, d_dot]``; z0: ``[B, H, d_dot]`` or None (zeros).
    Returns ``den``: ``[B, H, T]`` and the final ``z_T``: ``[B, H, d_dot]``.
    """
    z = torch.cumsum(phi_k, dim=2)
    if z0 is not None:
        z = z + z0.unsqueeze(2)
    den = (phi_q * z).sum(dim=-1)
    return den, z[:, :, -1]
