"""Packed sequences as one padded batch: how attention cores without a packed form of their own
(softmax, the FWM) and the short convolution run ``N`` sequences packed along ``T`` (offsets
``cu_seqlens``, ``fwp.ops.packing``).

Row ``n`` of the batch is sequence ``n`` (the order of a state's rows), padded at the end to the
longest length ``T_max``; ``padding`` ``[N, T_max]`` is its ``key_padding_mask``. The gathers are
``fwp.ops.PackedLayout``'s, with all sequences in one group.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fwp.ops import PackedLayout, packed_layouts


@dataclass(frozen=True)
class PaddedBatch:
    """``N`` packed sequences ↔ one padded batch ``[N, ·, T_max, ·]`` in sequence order."""

    layout: PackedLayout

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: Tensor) -> PaddedBatch:
        """The batch of the (valid) offsets ``cu_seqlens`` ``[N + 1]``."""
        return cls(PackedLayout.one_batch(cu_seqlens))

    @property
    def sequences(self) -> int:
        """``N``."""
        return self.layout.sequences

    @property
    def padding(self) -> Tensor:
        """``[N, T_max]`` bool, True past a sequence's end."""
        return self.layout.paddings[0]

    def unpack(self, x: Tensor) -> Tensor:
        """Packed ``[1, H, T, *rest]`` → padded ``[N, H, T_max, *rest]`` (a padding slot holds a copy of
        its sequence's last position and passes no gradient back)."""
        return self.layout.unpack(x)[0]

    def pack(self, x: Tensor) -> Tensor:
        """Padded ``[N, H, T_max, *rest]`` → packed ``[1, H, T, *rest]`` (padding dropped)."""
        return self.layout.pack([x])


def packed_batches(
    q: Tensor,
    k: Tensor,
    cu_seqlens: Tensor,
    query_cu_seqlens: Tensor | None,
    key_padding_mask: Tensor | None,
) -> tuple[PaddedBatch, PaddedBatch]:
    """The padded batches of packed keys and queries (``fwp.attention.base``); a ValueError naming the
    argument unless q and k are ``[1, H, T, d]``, the offsets fit them and no ``key_padding_mask`` is
    given."""
    keys, queries = packed_layouts(q, k, cu_seqlens, query_cu_seqlens, key_padding_mask, one_batch=True)
    return PaddedBatch(keys), PaddedBatch(queries)
