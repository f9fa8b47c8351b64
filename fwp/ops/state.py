"""The carried state of a fast-weight recurrence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FastWeightState:
    """Fast weight memory of every head.

    ``W``: ``[B, H, d_dot, d_v]``, the transpose of the paper's ``W ∈ R^{d_v × d_dot}`` so that the
    read-out of a row feature ``φ(q)`` is ``φ(q) @ W``.
    ``z``: ``[B, H, d_dot]``, the running key sum ``Σ_j φ(k_j)`` of the denominator normalisation,
    or ``None`` when no denominator is used.
    ``conv``: ``[B, K − 1, C]``, the last inputs of the layer's short convolution on q, k, v
    (``fwp.attention.parametrisation.ShortConvolution``), or ``None`` without one. The ops neither
    read nor write it; the layer that owns the convolution does, so that the whole state of a layer
    is carried, detached, reordered and saved as one object.
    """

    W: Tensor
    z: Tensor | None = None
    conv: Tensor | None = None

    @classmethod
    def zeros(
        cls,
        batch: int,
        heads: int,
        d_dot: int,
        d_v: int,
        *,
        denominator: bool,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> FastWeightState:
        """An empty memory ``W_0 = 0`` (and ``z_0 = 0`` with a denominator)."""
        W = torch.zeros(batch, heads, d_dot, d_v, dtype=dtype, device=device)
        z = torch.zeros(batch, heads, d_dot, dtype=dtype, device=device) if denominator else None
        return cls(W, z)

    def detach(self) -> FastWeightState:
        """The same memory cut from the autograd graph (segment carry between LM segments)."""
        return FastWeightState(*(None if x is None else x.detach() for x in (self.W, self.z, self.conv)))

    def index_select(self, index: Tensor) -> FastWeightState:
        """Reorder or repeat batch rows (beam search): ``index`` is ``[B']`` into dim 0."""
        return FastWeightState(
            *(None if x is None else x.index_select(0, index) for x in (self.W, self.z, self.conv))
        )

    def to(self, dtype: torch.dtype) -> FastWeightState:
        """The same memory in another floating dtype."""
        return FastWeightState(*(None if x is None else x.to(dtype) for x in (self.W, self.z, self.conv)))
