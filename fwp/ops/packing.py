"""Packed variable-length sequences: ``N`` sequences laid end to end along one time axis of length ``T``.

A packing is described by its offsets ``cu_seqlens``: a 1-D integer tensor ``[N + 1]`` with
``0 = c_0 < c_1 < … < c_N = T``; sequence ``n`` holds the packed positions ``c_n … c_{n+1} − 1``.
This module turns lengths into offsets and offsets into what a model needs per packed position
(``sequence_ids``, ``positions_in_sequence``) and checks offsets (``validate_cu_seqlens``).
``fwp.ops.packed_layout`` moves packed tensors to padded batches and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

OFFSET_DTYPES = (torch.int32, torch.int64)


def cu_seqlens_from_lengths(
    lengths: Tensor | Sequence[int], *, device: torch.device | str | None = None
) -> Tensor:
    """The offsets ``[0, l_0, l_0 + l_1, …, Σ l]`` (int64 ``[N + 1]``) of sequences of ``lengths``
    (``[N]``, every length ≥ 1; a ValueError naming ``lengths`` otherwise)."""
    lengths = torch.as_tensor(lengths, device=device)
    if (
        lengths.dim() != 1
        or lengths.numel() == 0
        or lengths.dtype.is_floating_point
        or lengths.dtype == torch.bool
    ):
        raise ValueError(
            f"lengths must be a non-empty 1-D sequence of integers, got shape {tuple(lengths.shape)} "
            f"dtype {lengths.dtype}"
        )
    if not bool((lengths >= 1).all()):
        raise ValueError(f"every sequence length must be >= 1, got lengths={lengths.tolist()}")
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, dim=0)]).long()


def validate_cu_seqlens(cu_seqlens: Tensor, total: int, *, name: str = "cu_seqlens") -> None:
    """A ValueError naming ``name`` unless ``cu_seqlens`` is a 1-D int32/int64 tensor ``[N + 1]``,
    ``N ≥ 1``, starting at 0, strictly increasing (no empty sequence) and ending at ``total`` (the
    packed length ``T``)."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in OFFSET_DTYPES:
        seen = cu_seqlens.dtype if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"{name} must be an int32 or int64 tensor [N + 1] of offsets, got {seen}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"{name} must be 1-D [N + 1] with N >= 1 sequences (0 = c_0 < c_1 < … < c_N = T), "
            f"got shape {tuple(cu_seqlens.shape)}"
        )
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(
            f"{name} must start at 0 and end at the packed length T={total}, got {name}[0]={offsets[0]}, "
            f"{name}[-1]={offsets[-1]}"
        )
    empty = [n for n, (start, end) in enumerate(pairwise(offsets)) if end <= start]
    if empty:
        raise ValueError(
            f"{name} must be strictly increasing (every sequence holds at least one position), got "
            f"{name}[{empty[0]}]={offsets[empty[0]]} >= {name}[{empty[0] + 1}]={offsets[empty[0] + 1]}"
        )


def sequence_lengths(cu_seqlens: Tensor) -> Tensor:
    """``[N]``: the length ``c_{n+1} − c_n`` of each packed sequence."""
    return cu_seqlens[1:] - cu_seqlens[:-1]


def sequence_ids(cu_seqlens: Tensor) -> Tensor:
    """``[T]`` int64: the index ``n`` of the sequence each packed position belongs to."""
    lengths = sequence_lengths(cu_seqlens).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def positions_in_sequence(cu_seqlens: Tensor) -> Tensor:
    """``[T]`` int64: each packed position's offset within its own sequence, ``t − c_n``
    (``0 … l_n − 1`` for every sequence: the positions a positional encoding of a separate run sees)."""
    ids = sequence_ids(cu_seqlens)
    return torch.arange(ids.numel(), device=cu_seqlens.device) - cu_seqlens.long()[ids]
