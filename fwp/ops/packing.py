"""Packed variable-length sequences: ``N`` sequences laid end to end along one time axis of length ``T``.

A packing is described by its offsets ``cu_seqlens``: a 1-D integer tensor ``[N + 1]`` with
``0 = c_0 < c_1 < … < c_N = T``; sequence ``n`` holds the packed positions ``c_n … c_{n+1} − 1``.
This module turns lengths into offsets and offsets into what a model needs per packed position
(``sequence_ids``, ``positions_in_sequence``), checks offsets (``validate_cu_seqlens``), and moves
packed tensors ``[1, H, T, …]`` to a padded batch ``[N, H, T_max, …]`` and back (``PackedLayout``),
which is how ``fwp.ops.fast_weight_attention`` runs packed sequences on the batched backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

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


class _SelectRows(torch.autograd.Function):
    """``x[rows]`` of a row-major ``x: [R, D]``, whose gradient is gathered too: ``grad[back_rows]``,
    zero where ``back_zero`` (``[R]`` bool or None). Exact when every row of ``x`` is read once by
    ``rows`` at the position ``back_rows`` names, other reads being padding whose gradient is dropped
    (``PackedLayout``); a gather is much cheaper than the ``index_add`` of ``index_select``'s backward."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, back_rows: Tensor, back_zero: Tensor | None) -> Tensor:
        ctx.save_for_backward(back_rows, back_zero)
        return x.index_select(0, rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        back_rows, back_zero = ctx.saved_tensors
        grad_x = grad.contiguous().index_select(0, back_rows)
        if back_zero is not None:
            grad_x.masked_fill_(back_zero.unsqueeze(-1), 0)
        return grad_x, None, None, None


@dataclass(frozen=True)
class PackedLayout:
    """Where the packed positions of ``N`` sequences sit in a padded batch ``[N, T_max]``.

    ``gather``: ``[N, T_max]`` packed position read by each batch slot; a slot past its sequence's end
    reads the sequence's last position (any finite value would do: it is padding). ``padding``:
    ``[N, T_max]`` bool, True past a sequence's end (a ``key_padding_mask``). ``scatter``: ``[T]`` the
    flat slot ``n · T_max + (t − c_n)`` of each packed position.

    ``unpack`` and ``pack`` are one gather each way, forward and backward. Padding slots hold copies
    that count as constants: ``unpack``'s gradient is the gradient of the real slots only (exact for
    ``fast_weight_attention``, where padded keys write nothing and padded read-outs are dropped).
    """

    gather: Tensor
    padding: Tensor
    scatter: Tensor

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: Tensor) -> PackedLayout:
        """The layout of the (valid) offsets ``cu_seqlens`` ``[N + 1]``."""
        offsets = cu_seqlens.long()
        lengths = sequence_lengths(offsets)
        longest = int(lengths.max())
        slots = torch.arange(longest, device=offsets.device)
        padding = slots >= lengths[:, None]
        gather = offsets[:-1, None] + torch.minimum(slots, lengths[:, None] - 1)
        scatter = sequence_ids(offsets) * longest + positions_in_sequence(offsets)
        return cls(gather, padding, scatter)

    @property
    def sequences(self) -> int:
        """``N``."""
        return self.gather.shape[0]

    def unpack(self, x: Tensor) -> Tensor:
        """Packed ``[1, H, T, *rest]`` → padded ``[N, H, T_max, *rest]`` (contiguous)."""
        _, H, T, *rest = x.shape
        unpack_rows, pack_rows, _ = self._rows(H, T)
        rows = _SelectRows.apply(x.reshape(H * T, -1), unpack_rows, pack_rows, None)
        return rows.view(*self.gather.shape[:1], H, self.gather.shape[1], *rest)

    def pack(self, x: Tensor) -> Tensor:
        """Padded ``[N, H, T_max, *rest]`` → packed ``[1, H, T, *rest]`` (contiguous; padding dropped)."""
        N, H, longest, *rest = x.shape
        unpack_rows, pack_rows, padding_rows = self._rows(H, self.scatter.numel())
        rows = _SelectRows.apply(x.reshape(N * H * longest, -1), pack_rows, unpack_rows, padding_rows)
        return rows.view(1, H, self.scatter.numel(), *rest)

    def _rows(self, heads: int, total: int) -> tuple[Tensor, Tensor, Tensor]:
        """Row indices for ``H = heads`` of the packed ``[H · T]`` and padded ``[N · H · T_max]`` row
        orders: the packed row of each padded slot, the padded row of each packed position, and which
        padded rows are padding."""
        N, longest = self.gather.shape
        head = torch.arange(heads, device=self.gather.device)
        unpack_rows = (head[None, :, None] * total + self.gather[:, None, :]).reshape(-1)
        sequence, position = self.scatter.div(longest, rounding_mode="floor"), self.scatter % longest
        pack_rows = ((sequence[None, :] * heads + head[:, None]) * longest + position[None, :]).reshape(-1)
        padding_rows = self.padding[:, None, :].expand(N, heads, longest).reshape(-1)
        return unpack_rows, pack_rows, padding_rows
