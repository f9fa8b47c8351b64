"""Feature maps φ : R^{d_k} → R^{d_dot}, applied to keys and queries alike (docs/attention.md).

All functions act on the last dimension and keep every leading dimension, e.g. ``[B, H, T, d_k]``
→ ``[B, H, T, d_dot]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def identity(x: Tensor) -> Tensor:
    """``φ(x) = x``; ``d_dot = d_k`` (tests and ablations)."""
    return x


def elu_plus_one(x: Tensor) -> Tensor:
    """Katharopoulos et al. (2020): ``φ(x) = elu(x) + 1``; ``d_dot = d_k``."""
    return F.elu(x) + 1.0


def dpfp(x: Tensor, nu: int = 1) -> Tensor:
    """Deterministic parameter-free projection (Schlag et al. 2021, eq. 37).

    ``z = [relu(x), relu(-x)] ∈ R^{2 d_k}``; ``φ(x) = concat_{j=1..ν} (z ⊙ roll(z, j))``;
    ``d_dot = 2 d_k ν``.
    """
    if nu < 1:
        raise ValueError(f"dpfp: nu must be >= 1, got nu={nu}")
    z = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([z * torch.roll(z, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)


def favor(x: Tensor, omega: Tensor, eps: float = 0.0) -> Tensor:
    """Performer FAVOR+ positive random features (Choromanski et al. 2021).

    ``u = Ω x`` with ``Ω``: ``[m, d_k]``;
    ``φ(x) = ([exp(u − ‖x‖²/2), exp(−u − ‖x‖²/2)] + eps) / sqrt(2m)``; ``d_dot = 2m``.
    ``eps`` is added before the scaling, as in the paper's language-model code (its ``kernel_eps``).
    """
    m = omega.shape[0]
    u = x @ omega.to(x.dtype).transpose(0, 1)
    half_norm = 0.5 * (x * x).sum(dim=-1, keepdim=True)
    features = torch.cat([torch.exp(u - half_norm), torch.exp(-u - half_norm)], dim=-1)
    return (features + eps) / math.sqrt(2 * m)


def orthogonal_random_projection(
    m: int,
    d: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """FAVOR+'s ``Ω``: ``[m, d]`` with orthogonal rows (blockwise, ``d`` rows a block) whose norms
    are χ_d-distributed, i.e. distributed like the norms of Gaussian vectors."""
    if m < 1 or d < 1:
        raise ValueError(f"orthogonal_random_projection: m and d must be >= 1, got m={m}, d={d}")
    blocks = []
    for _ in range(math.ceil(m / d)):
        gaussian = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.transpose(0, 1))
    rows = torch.cat(blocks, dim=0)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (rows * norms).to(device=device, dtype=dtype)


def transposed_orthogonal_projection(
    m: int, d: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The official language-model code's ``Ω`` ``[m, d]``: ``Pᵀ`` for ``P`` ``[d, m]`` drawn like
    ``orthogonal_random_projection(d, m)`` (its ``draw_orthogonal_random_matrix(d_head, m)``): the ``d``
    input dimensions get orthogonal directions in ``R^m`` (blocks of ``m``) scaled by χ_m norms, so that
    for ``d ≤ m`` ``Ωᵀ Ω`` is diagonal rather than ``Ω Ωᵀ``."""
    return orthogonal_random_projection(d, m, generator=generator, dtype=dtype).transpose(0, 1).contiguous()


def feature_dim(name: str, d_k: int, *, nu: int = 1, m: int = 16) -> int:
    """``d_dot`` of the named feature map for head size ``d_k``."""
    dims = {"identity": d_k, "elu": d_k, "dpfp": 2 * d_k * nu, "favor": 2 * m}
    if name not in dims:
        raise ValueError(f"feature map: unknown name {name!r}; known: {sorted(dims)}")
    return dims[name]
