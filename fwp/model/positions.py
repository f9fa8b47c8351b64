"""Absolute positional encodings added to token embeddings ``[B, T, d_model]``.

- ``none``: nothing added (the paper's choice for language models that carry fast weights across
  segments: the fast weights then see one unbounded stream, with no position to run out of).
- ``sinusoidal`` (Vaswani et al. 2017): ``PE[p] = [sin(p·ω_0), …, sin(p·ω_{d/2-1}), cos(p·ω_0), …]``
  with ``ω_i = 10000^{-2i/d}`` (sines then cosines, as in Transformer-XL); computed in float64 so that
  large offsets of a carried stream keep their precision.
- ``learned``: one trained vector per position ``< max_positions``.

``forward(x, offset)`` adds the encodings of positions ``offset … offset + T − 1``, so a segment that
continues another one (``offset`` = tokens seen before) gets the positions it would have had in one
long pass. ``forward(x, positions=p)`` adds those of the given positions ``p`` ``[T]`` instead: packed
sequences (``fwp.ops.packing.positions_in_sequence``), whose positions restart at 0 in every sequence.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Positional = Literal["none", "sinusoidal", "learned"]
POSITIONALS = ("none", "sinusoidal", "learned")


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"position_offset must be >= 0, got position_offset={offset}")


def position_indices(x: Tensor, offset: int, positions: Tensor | None) -> Tensor:
    """The positions ``[T]`` of ``x`` ``[B, T, d]``: ``positions`` when given (then ``offset`` must be 0),
    else ``offset … offset + T − 1``."""
    _check_offset(offset)
    if positions is None:
        return torch.arange(offset, offset + x.shape[1], device=x.device)
    if offset:
        raise ValueError(f"give position_offset or positions, not both (position_offset={offset})")
    if tuple(positions.shape) != (x.shape[1],):
        raise ValueError(f"positions must be [T = {x.shape[1]}], got shape {tuple(positions.shape)}")
    return positions


class NoPositions(nn.Module):
    """Adds nothing: ``x`` is returned unchanged."""

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        position_indices(x, offset, positions)
        return x


class SinusoidalPositions(nn.Module):
    """Fixed sinusoids, no parameters; any position is valid."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model < 2 or d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model >= 2, got d_model={d_model}")
        self.d_model = d_model

    def encodings(self, positions: Tensor) -> Tensor:
        """``[T, d_model]`` float64 encodings of the positions ``[T]``."""
        device = positions.device
        positions = positions.to(torch.float64)
        frequencies = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float64, device=device)
            * (-math.log(10000.0) / self.d_model)
        )
        angles = positions[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        return x + self.encodings(position_indices(x, offset, positions)).to(x.dtype)


class LearnedPositions(nn.Module):
    """A trained vector per position ``0 … max_positions − 1`` (normal init, std ``d_model^{-1/2}``)."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got max_positions={max_positions}")
        self.embedding = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        last = offset + x.shape[1] - 1 if positions is None else int(positions.max())
        positions = position_indices(x, offset, positions)
        if last >= self.embedding.num_embeddings:
            raise ValueError(
                f"position {last} is beyond the learned positions (max_positions="
                f"{self.embedding.num_embeddings}); raise max_positions or use positional='sinusoidal'/'none'"
            )
        return x + self.embedding(positions).to(x.dtype)


def positional_encoding(kind: Positional, d_model: int, max_positions: int) -> nn.Module:
    """The encoding named ``kind`` (one of ``none``, ``sinusoidal``, ``learned``)."""
    if kind == "none":
        return NoPositions()
    if kind == "sinusoidal":
        return SinusoidalPositions(d_model)
    if kind == "learned":
        return LearnedPositions(d_model, max_positions)
    raise ValueError(f"positional must be one of {list(POSITIONALS)}, got positional={kind!r}")
