"""Tile sizes and warps of the Triton kernels, chosen from the shapes (no autotuning). Imports no Triton."""

from __future__ import annotations

from dataclasses import dataclass

MIN_TILE = 16
MAX_CHUNK = 64
MAX_BLOCK = 32
WARPS = (1, 2, 4, 8, 16)


def _power_of_two_within(n: int, low: int, high: int) -> int:
    """The smallest power of two ``>= n``, clamped to ``[low, high]``."""
    return min(high, max(low, 1 << max(n - 1, 0).bit_length()))


@dataclass(frozen=True)
class Tiles:
    """``chunk`` tokens per chunk, ``block_k`` columns of ``d_dot`` and ``block_v`` columns of ``d_v``
    per state tile ``[block_k, block_v]`` (powers of two ``>= 16``, the smallest portable ``tl.dot``
    operand), and ``num_warps`` per program. ``d_dot`` and ``d_v`` are split into as many tiles as
    they need."""

    chunk: int
    block_k: int
    block_v: int
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("chunk", "block_k", "block_v"):
            value = getattr(self, name)
            if value < MIN_TILE or value & (value - 1):
                raise ValueError(f"Tiles.{name} must be a power of two >= {MIN_TILE}, got {name}={value}")
        if self.num_warps not in WARPS:
            raise ValueError(f"Tiles.num_warps must be one of {WARPS}, got num_warps={self.num_warps}")

    @classmethod
    def for_shapes(cls, d_dot: int, d_v: int, chunk_size: int) -> Tiles:
        """``chunk_size`` rounded up to a power of two in ``[16, 64]``; state tiles of up to 32 × 32
        (narrow ``d_v`` tiles also give the sequential state kernels, one program per ``d_v`` tile and
        head, more parallelism); 8 warps for 64-token chunks. Picked from the register and shared
        memory use of the kernels compiled for sm_80/sm_90: larger tiles spill heavily."""
        chunk = _power_of_two_within(chunk_size, MIN_TILE, MAX_CHUNK)
        return cls(
            chunk=chunk,
            block_k=_power_of_two_within(d_dot, MIN_TILE, MAX_BLOCK),
            block_v=_power_of_two_within(d_v, MIN_TILE, MAX_BLOCK),
            num_warps=8 if chunk >= 64 else 4,
        )
