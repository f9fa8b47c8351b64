"""Packed sequences ↔ padded batches: how ``fwp.ops.fast_weight_attention`` runs ``N`` packed sequences
(offsets ``cu_seqlens``, ``fwp.ops.packing``) on the batched backends.

The sequences are sorted by length and cut into groups (``group_by_length``); each group is one padded
batch ``[N_g, H, T_g, ·]`` (``T_g`` its longest length, padding at the end of each row, given to the
backend as a ``key_padding_mask``). The cut minimises ``Σ_g (N_g · T_g + GROUP_COST)``: the positions
the attention core works on plus a price per batched call, so that the core does not run every
sequence to the longest length (one padded batch costs ``N · T_max``) nor make one call per sequence.

``PackedLayout.unpack`` turns a packed ``[1, H, T, ·]`` into the groups' batches and ``pack`` turns the
groups' read-outs back, each one gather forward and one backward.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fwp.ops.packing import positions_in_sequence, sequence_ids, sequence_lengths, validate_cu_seqlens

GROUP_COST = 64
"""The price of one more batched call, in padded positions (measured with ``bench/packed.py``: a call
costs about as much as a few dozen positions at ``H = 8, d = 64``)."""
MAX_CUT_POINTS = 64
"""At most this many distinct (rounded-up) lengths are candidate group boundaries: the cut is a dynamic
programme quadratic in their number."""
RECENT_LAYOUTS = 8
"""How many layouts ``packed_layouts`` remembers (every layer of a model passes the same offsets)."""
_recent: OrderedDict[tuple, tuple[Tensor, PackedLayout]] = OrderedDict()


def group_by_length(lengths: list[int], group_cost: int | None = None) -> list[list[int]]:
    """The sequences (indices into ``lengths``) cut into groups of similar length, longest first.

    Sorted by length, longest first, the sequences are cut into runs minimising ``Σ_g (N_g · T_g +
    group_cost)`` (``T_g``: the run's first, longest length; ``group_cost`` default ``GROUP_COST``) by
    dynamic programming over the points where the length (rounded up to a multiple of
    ``⌈max / MAX_CUT_POINTS⌉``) changes.
    """
    group_cost = GROUP_COST if group_cost is None else group_cost
    order = sorted(range(len(lengths)), key=lambda n: -lengths[n])
    step = math.ceil(lengths[order[0]] / MAX_CUT_POINTS)
    binned = [math.ceil(lengths[n] / step) for n in order]
    starts = [i for i in range(len(order)) if i == 0 or binned[i] != binned[i - 1]] + [len(order)]
    best, cut = [0.0] + [math.inf] * (len(starts) - 1), [0] * len(starts)
    for j in range(1, len(starts)):
        for i in range(j):
            cost = best[i] + lengths[order[starts[i]]] * (starts[j] - starts[i]) + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(starts) - 1
    while j > 0:
        groups.append(order[starts[cut[j]] : starts[j]])
        j = cut[j]
    return groups[::-1]


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
    """Where the packed positions of ``N`` sequences sit in the padded batches of their groups.

    ``groups``: the sequence indices of each group, in batch-row order; ``paddings``: ``[N_g, T_g]``
    bool per group, True past a sequence's end (its ``key_padding_mask``); ``offsets`` ``[N + 1]`` and
    ``lengths`` ``[N]`` (int64); ``total``: ``T``, the packed length. A padding slot holds a copy of its
    sequence's last position, counted as a constant: ``unpack``'s gradient is the gradient of the real
    slots only (exact for ``fast_weight_attention``, where padded keys write nothing and padded
    read-outs are dropped).
    """

    groups: tuple[tuple[int, ...], ...]
    paddings: tuple[Tensor, ...]
    offsets: Tensor
    lengths: Tensor
    total: int
    _rows: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_cu_seqlens(
        cls, cu_seqlens: Tensor, *, groups: tuple[tuple[int, ...], ...] | None = None
    ) -> PackedLayout:
        """The layout of the (valid) offsets ``cu_seqlens`` ``[N + 1]``, cut by ``group_by_length`` or
        into the given ``groups`` (another layout's: cross-attention queries go with their keys)."""
        offsets = cu_seqlens.long()
        lengths = sequence_lengths(offsets)
        host_lengths = lengths.tolist()
        if groups is None:
            groups = tuple(tuple(group) for group in group_by_length(host_lengths))
        paddings = []
        for group in groups:
            slots = torch.arange(max(host_lengths[n] for n in group), device=offsets.device)
            paddings.append(slots >= lengths[list(group)][:, None])
        return cls(groups, tuple(paddings), offsets, lengths, sum(host_lengths))

    @classmethod
    def one_batch(cls, cu_seqlens: Tensor) -> PackedLayout:
        """All sequences in one padded batch ``[N, ·, T_max, ·]``, row ``n`` sequence ``n``."""
        return cls.from_cu_seqlens(cu_seqlens, groups=(tuple(range(cu_seqlens.numel() - 1)),))

    @property
    def sequences(self) -> int:
        """``N``."""
        return self.lengths.numel()

    def unpack(self, x: Tensor) -> list[Tensor]:
        """Packed ``[1, H, T, *rest]`` → each group's padded batch ``[N_g, H, T_g, *rest]``."""
        _, H, T, *rest = x.shape
        unpack_rows, pack_rows, _ = self.rows(H)
        batches = _SelectRows.apply(x.reshape(H * T, -1), unpack_rows, pack_rows, None)
        sizes = [padding.numel() * H for padding in self.paddings]
        return [
            batch.view(padding.shape[0], H, padding.shape[1], *rest)
            for batch, padding in zip(batches.split(sizes), self.paddings, strict=True)
        ]

    def pack(self, batches: list[Tensor]) -> Tensor:
        """The groups' padded ``[N_g, H, T_g, *rest]`` → packed ``[1, H, T, *rest]`` (padding dropped)."""
        _, H, _, *rest = batches[0].shape
        unpack_rows, pack_rows, padding_rows = self.rows(H)
        rows = [batch.reshape(batch.shape[:3].numel(), -1) for batch in batches]
        flat = rows[0] if len(rows) == 1 else torch.cat(rows)
        return _SelectRows.apply(flat, pack_rows, unpack_rows, padding_rows).view(1, H, self.total, *rest)

    def split_rows(self, x: Tensor) -> list[Tensor]:
        """``[N, …]`` (one row per sequence, e.g. initial memories) → each group's rows ``[N_g, …]``."""
        return [x.index_select(0, torch.tensor(group, device=x.device)) for group in self.groups]

    def merge_rows(self, parts: list[Tensor]) -> Tensor:
        """Each group's rows ``[N_g, …]`` → ``[N, …]`` in sequence order (``split_rows`` undone)."""
        return torch.cat(parts).index_select(0, torch.argsort(self.row_order.to(parts[0].device)))

    @property
    def row_order(self) -> Tensor:
        """``[N]``: the sequence of each batch row, the groups' rows one after the other."""
        return torch.tensor([n for group in self.groups for n in group], device=self.offsets.device)

    def rows(self, heads: int) -> tuple[Tensor, Tensor, Tensor]:
        """For ``heads`` heads: the packed row (of ``[H · T]``) read by each padded slot (of the groups'
        ``[N_g, H, T_g]`` one after the other), the padded slot of each packed row, and which padded
        slots are padding. Computed once per head count."""
        if heads not in self._rows:
            self._rows[heads] = self._compute_rows(heads)
        return self._rows[heads]

    def _compute_rows(self, heads: int) -> tuple[Tensor, Tensor, Tensor]:
        device = self.offsets.device
        order = self.row_order
        widths = torch.tensor([padding.shape[1] for padding in self.paddings], device=device)
        counts = torch.tensor([len(group) for group in self.groups], device=device)
        first_row = torch.cumsum(counts, 0) - counts
        # per batch row (sequence order[r]): T_g, its group's first head-free slot, its index in the group
        row_width = widths.repeat_interleave(counts)
        row_base = (torch.cumsum(counts * widths, 0) - counts * widths).repeat_interleave(counts)
        row_in_group = torch.arange(order.numel(), device=device) - first_row.repeat_interleave(counts)
        # padded slots, in the order (group, row, head, position)
        slot_width = row_width.repeat_interleave(heads)
        slot_sequence = order.repeat_interleave(heads).repeat_interleave(slot_width)
        slot_head = torch.arange(heads, device=device).repeat(order.numel()).repeat_interleave(slot_width)
        slot_start = (torch.cumsum(slot_width, 0) - slot_width).repeat_interleave(slot_width)
        slot_position = torch.arange(slot_start.numel(), device=device) - slot_start
        length = self.lengths[slot_sequence]
        unpack_rows = (
            slot_head * self.total + self.offsets[slot_sequence] + torch.minimum(slot_position, length - 1)
        )
        padding_rows = slot_position >= length
        # packed positions, in the order (head, position): the slot (r·H + h)·T_g + p of their group
        row = torch.argsort(order)[sequence_ids(self.offsets)]
        head = torch.arange(heads, device=device)[:, None]
        pack_rows = (
            heads * row_base[row]
            + (row_in_group[row] * heads + head) * row_width[row]
            + positions_in_sequence(self.offsets)
        ).reshape(-1)
        return unpack_rows, pack_rows, padding_rows


def packed_layouts(
    q: Tensor,
    k: Tensor,
    cu_seqlens: Tensor,
    query_cu_seqlens: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    *,
    one_batch: bool = False,
) -> tuple[PackedLayout, PackedLayout]:
    """The layouts of packed keys ``k`` ``[1, H, T, ·]`` (offsets ``cu_seqlens``) and queries ``q``
    ``[1, H, T_q, ·]`` (offsets ``query_cu_seqlens``, default ``cu_seqlens``; cut into the keys' groups),
    cut by length, or all in ``one_batch``. A ValueError naming the argument unless q and k have batch
    1, the offsets are valid for them and pack the same number of sequences, and no
    ``key_padding_mask`` is given (packed sequences hold no padding)."""
    if key_padding_mask is not None:
        raise ValueError("cu_seqlens replaces key_padding_mask (packed sequences hold no padding): give one")
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != 1 or k.shape[0] != 1:
        raise ValueError(
            f"cu_seqlens packs N sequences into batch B = 1: q and k must be [1, H, T, D], got q "
            f"{tuple(q.shape)} and k {tuple(k.shape)}"
        )
    cut = "one batch" if one_batch else "by length"
    keys = checked_layout(cu_seqlens, k.shape[2], q.device, "cu_seqlens", cut)
    if query_cu_seqlens is None:
        if q.shape[2] != k.shape[2]:
            raise ValueError(
                f"cu_seqlens packs the keys' T={k.shape[2]}, but q has T_q={q.shape[2]}: give "
                "query_cu_seqlens, the queries' offsets"
            )
        return keys, keys
    return keys, checked_layout(query_cu_seqlens, q.shape[2], q.device, "query_cu_seqlens", keys.groups)


def checked_layout(
    cu_seqlens: Tensor, total: int, device: torch.device, name: str, cut: str | tuple[tuple[int, ...], ...]
) -> PackedLayout:
    """``validate_cu_seqlens`` (and on ``device``; a ValueError naming ``name`` otherwise), then the
    layout of ``cu_seqlens``, cut ``"by length"``, into ``"one batch"`` or into the given groups. The
    last ``RECENT_LAYOUTS`` layouts are remembered by the offsets tensor's identity and version counter
    (an in-place change makes a new one; the entry holds the tensor, so its id is not reused), so that
    the layers of a model that all get the same offsets build and check them once."""
    key = None
    if isinstance(cu_seqlens, Tensor):
        if cu_seqlens.device != device:
            raise ValueError(f"{name} must be on q's device {device}, got {cu_seqlens.device}")
        if not cu_seqlens.is_inference() and not torch.compiler.is_compiling():
            key = (id(cu_seqlens), cu_seqlens._version, cut)
            remembered = _recent.get(key)
            if remembered is not None and remembered[0] is cu_seqlens and remembered[1].total == total:
                _recent.move_to_end(key)
                return remembered[1]
    validate_cu_seqlens(cu_seqlens, total, name=name)
    if isinstance(cut, tuple) and sum(map(len, cut)) != cu_seqlens.numel() - 1:
        raise ValueError(
            f"query_cu_seqlens and cu_seqlens must pack the same number of sequences, got "
            f"{cu_seqlens.numel() - 1} and {sum(map(len, cut))}"
        )
    if cut == "one batch":
        layout = PackedLayout.one_batch(cu_seqlens)
    else:
        layout = PackedLayout.from_cu_seqlens(cu_seqlens, groups=None if cut == "by length" else cut)
    if key is not None:
        _recent[key] = (cu_seqlens, layout)
        while len(_recent) > RECENT_LAYOUTS:
            _recent.popitem(last=False)
    return layout
