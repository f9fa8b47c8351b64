"""Absolute positional encodings added to token embeddings ``[B, T, d_model]``.

- ``none``: nothing added (the paper's choice for language models that carry fast weights across
  segments: the fast weights then see one unbounded stream, with no position to run out of).
- ``sinusoidal`` (Vaswani et al. 2017): ``PE[p] = [sin(p·ω_0), …, sin(p·ω_{d/2-1}), cos(p·ω_0), …]``
  with ``ω_i = 10000^{-2i/d}`` (sines then cosines, as in Transformer-XL); computed in float64 so that
  large offsets of a carried stream keep their precision.
- ``learned``: one trained vector per position ``< max_positions``.

``forward(x, offset)`` adds the encodings of positions ``offset … offset + T − 1``, so a segment that
continues another one (``offset`` = tokens seen before) gets the positions it would have had in one
long pass.
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


class NoPositions(nn.Module):
    """Adds nothing: ``x`` is returned unchanged."""

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_offset(offset)
        return x


class SinusoidalPositions(nn.Module):
    """Fixed sinusoids, no parameters; any position is valid."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if d_model < 2 or d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model >= 2, got d_model={d_model}")
        self.d_model = d_model

    def encodings(self, length: int, offset: int, device: torch.device) -> Tensor:
        """``[length, d_model]`` float64 encodings of positions ``offset … offset + length − 1``."""
        positions = torch.arange(offset, offset + length, dtype=torch.float64, device=device)
        frequencies = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float64, device=device)
            * (-math.log(10000.0) / self.d_model)
        )
        angles = positions[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_offset(offset)
        return x + self.encodings(x.shape[1], offset, x.device).to(x.dtype)


class LearnedPositions(nn.Module):
    """A trained vector per position ``0 … max_positions − 1`` (normal init, std ``d_model^{-1/2}``)."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got max_positions={max_positions}")
        self.embedding = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        _check_offset(offset)
        last = offset + x.shape[1] - 1
        if last >= self.embedding.num_embeddings:
            raise ValueError(
                f"position {last} is beyond the learned positions (max_positions="
                f"{self.embedding.num_embeddings}); raise max_positions or use positional='sinusoidal'/'none'"
            )
        positions = torch.arange(offset, last + 1, device=x.device)
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
