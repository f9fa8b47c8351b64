"""Feature maps φ : R^{d_k} → R^{d_dot}, applied to keys and queries alike (docs/attention.md).

Two forms: tensor functions (``elu_plus_one``, ``dpfp``, ``favor`` …) and, around them, the small
``FeatureMap`` modules of the table ``FEATURE_MAPS`` (name → class) that the fast-weight layers hold:
each knows its options, its ``d_dot`` and, for FAVOR+, its random projection ``Ω`` (a buffer) and the
redraw hook ``start_sequence``. Everything acts on the last dimension and keeps every leading one,
e.g. ``[B, H, T, d_k]`` → ``[B, H, T, d_dot]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwp.ops.validation import require_at_least, require_choice

L2_EPS = 1e-6


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


def l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``φ(x) = x / √(‖x‖² + ε)`` over the last dimension (DeltaNet's normalised keys and queries, Yang
    et al. 2024; ε as in their code); ``d_dot = d_k``. Every feature vector has norm < 1, so the delta
    rule's ``I − β kᵀk`` has eigenvalues in ``[1 − β, 1]``."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def silu_l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``φ(x) = l2_normalize(silu(x))``, DeltaNet's feature map without a short convolution."""
    return l2_normalize(F.silu(x), eps)


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


REDRAW_POLICIES = ("train", "always", "never")
OMEGA_DRAWS: dict[str, Callable[..., Tensor]] = {
    "orthogonal": orthogonal_random_projection,
    "transposed": transposed_orthogonal_projection,
}


class FeatureMap(nn.Module):
    """φ for keys of size ``d_k``, as a module. Subclasses set ``name`` and ``options`` (their keyword
    options), implement ``forward`` ``[..., d_k]`` → ``[..., d_dot]`` and, if it is not ``d_k``,
    ``d_dot``; ``start_sequence`` is the hook called when a sequence starts (FAVOR+ redraws Ω)."""

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, d_k: int) -> None:
        super().__init__()
        require_at_least("d_k", d_k, 1)
        self.d_k = d_k

    @property
    def d_dot(self) -> int:
        """The feature dimension."""
        return self.d_k

    def start_sequence(self) -> None:
        """Called at the start of every sequence (a write without a carried state); nothing here."""

    def extra_repr(self) -> str:
        return ", ".join(f"{option}={getattr(self, option)!r}" for option in self.options)


class Identity(FeatureMap):
    """``φ(x) = x`` (tests and ablations)."""

    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return identity(x)


class EluPlusOne(FeatureMap):
    """``φ(x) = elu(x) + 1`` (Katharopoulos et al. 2020)."""

    name = "elu"

    def forward(self, x: Tensor) -> Tensor:
        return elu_plus_one(x)


class Tanh(FeatureMap):
    """``φ(x) = tanh(x)``, the Fast Weight Memory's keys (Schlag, Munkhdalai & Schmidhuber 2021)."""

    name = "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


class L2(FeatureMap):
    """``φ(x) = x / √(‖x‖² + 1e-6)`` (``l2``): keys and queries of unit norm (Yang et al. 2024)."""

    name = "l2"

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(x)


class SiluL2(FeatureMap):
    """``φ(x) = l2(silu(x))`` (``silu_l2``): DeltaNet's map when no short convolution (whose output
    passes a SiLU already) comes before it."""

    name = "silu_l2"

    def forward(self, x: Tensor) -> Tensor:
        return silu_l2_normalize(x)


class Dpfp(FeatureMap):
    """DPFP of order ``nu`` (``dpfp``); ``d_dot = 2 d_k ν``."""

    name = "dpfp"
    options = ("nu",)

    def __init__(self, d_k: int, *, nu: int = 1) -> None:
        super().__init__(d_k)
        require_at_least("nu", nu, 1)
        self.nu = nu

    @property
    def d_dot(self) -> int:
        return 2 * self.d_k * self.nu

    def forward(self, x: Tensor) -> Tensor:
        return dpfp(x, self.nu)


class Favor(FeatureMap):
    """FAVOR+ with ``m`` random features (``favor``; ``d_dot = 2m``) and its projection ``Ω`` ``[m, d_k]``,
    a persistent buffer drawn by ``omega_draw`` (``orthogonal`` or ``transposed``).

    ``redraw`` decides what ``start_sequence`` does: ``train`` — a new Ω while training, frozen in
    eval; ``always`` — eval included; ``never``. ``feature_eps`` is added to every feature before the
    ``1/√(2m)`` scaling.
    """

    name = "favor"
    options = ("m", "redraw", "omega_draw", "feature_eps")
    omega: Tensor

    def __init__(
        self,
        d_k: int,
        *,
        m: int = 16,
        redraw: str = "train",
        omega_draw: str = "orthogonal",
        feature_eps: float = 0.0,
    ) -> None:
        super().__init__(d_k)
        require_at_least("m", m, 1)
        require_choice("redraw", redraw, REDRAW_POLICIES)
        require_choice("omega_draw", omega_draw, tuple(OMEGA_DRAWS))
        require_at_least("feature_eps", feature_eps, 0.0)
        self.m, self.redraw, self.omega_draw, self.feature_eps = m, redraw, omega_draw, feature_eps
        self.register_buffer("omega", OMEGA_DRAWS[omega_draw](m, d_k), persistent=True)

    @property
    def d_dot(self) -> int:
        return 2 * self.m

    def forward(self, x: Tensor) -> Tensor:
        return favor(x, self.omega, self.feature_eps)

    def redraw_projection(self) -> None:
        """Draw a new Ω from the global RNG, in place (the buffer keeps its device and dtype)."""
        omega = OMEGA_DRAWS[self.omega_draw](self.m, self.d_k)
        self.omega.copy_(omega.to(device=self.omega.device, dtype=self.omega.dtype))

    def start_sequence(self) -> None:
        """Apply the redraw policy."""
        if self.redraw == "always" or (self.redraw == "train" and self.training):
            self.redraw_projection()


FEATURE_MAPS: dict[str, type[FeatureMap]] = {
    cls.name: cls for cls in (Identity, EluPlusOne, Dpfp, Favor, Tanh, L2, SiluL2)
}
"""Every feature map by name; a new one is a ``FeatureMap`` subclass added here."""


def build_feature_map(name: str, d_k: int, **options: Any) -> FeatureMap:
    """The feature map ``name`` for keys of size ``d_k`` with ``options`` (a subset of its class's
    ``options``; any other is refused by name)."""
    require_choice("feature_map", name, tuple(FEATURE_MAPS))
    cls = FEATURE_MAPS[name]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ValueError(f"feature_map {name!r} takes the options {list(cls.options)}, got {unknown}")
    return cls(d_k, **options)
