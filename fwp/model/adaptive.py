"""Adaptive input embeddings (Baevski & Auli 2019) and their tie to ``nn.AdaptiveLogSoftmaxWithLoss``.

The vocabulary (sorted by frequency) is split by cutoffs ``c_1 < … < c_n`` into clusters
``[0, c_1), [c_1, c_2), …, [c_n, V)``. Cluster 0 embeds in ``d_model``; cluster ``i ≥ 1`` embeds in
``h_i = ⌊d_model / div^i⌋`` and is projected to ``d_model``: ``e(t) = E_i[t − c_i] P_i`` with
``E_i ∈ R^{|cluster i| × h_i}``, ``P_i ∈ R^{h_i × d_model}`` — the layout of
``nn.AdaptiveLogSoftmaxWithLoss``, whose tail ``i`` is ``Linear(d_model, h_i)`` then
``Linear(h_i, |cluster|)``.
Tying input and output (Transformer-XL's ``tie_weight`` + ``tie_projs``) reads the embedding of
cluster 0 from the head's first ``c_1`` rows and ``(E_i, P_i)`` from tail ``i``'s two weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Cluster = tuple[Tensor, Tensor | None]
"""An embedding table ``[size, h]`` and its projection ``[h, d_model]`` (None when h = d_model)."""


def check_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """``cutoffs`` as a list, or a ValueError unless they are increasing integers in ``(0, vocab_size)``."""
    cutoffs = list(cutoffs)
    valid = (
        len(cutoffs) > 0
        and all(isinstance(c, int) and 0 < c < vocab_size for c in cutoffs)
        and all(a < b for a, b in itertools.pairwise(cutoffs))
    )
    if not valid:
        raise ValueError(
            "adaptive_cutoffs must be a non-empty increasing list of integers in (0, vocab_size="
            f"{vocab_size}), got adaptive_cutoffs={cutoffs}"
        )
    return cutoffs


def cluster_width(d_model: int, div_value: float, cluster: int) -> int:
    """``h_i = ⌊d_model / div^i⌋``, the embedding width of cluster ``i`` (as in the adaptive softmax)."""
    width = int(d_model // (div_value**cluster))
    if width < 1:
        raise ValueError(
            f"adaptive_div_value={div_value} leaves cluster {cluster} with width 0 at d_model={d_model}"
        )
    return width


def adaptive_embedding(tokens: Tensor, boundaries: Sequence[int], clusters: Sequence[Cluster]) -> Tensor:
    """Embed ``tokens`` ``[...]`` → ``[..., d_model]``; ``boundaries`` = ``[0, c_1, …, c_n, V]`` and
    ``clusters[i]`` embeds the tokens in ``[boundaries[i], boundaries[i+1])``."""
    vocab_size = boundaries[-1]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"tokens must be in [0, vocab_size={vocab_size}), got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )
    table, projection = clusters[0]
    d_model = table.shape[1] if projection is None else projection.shape[1]
    flat = tokens.reshape(-1)
    embedded = table.new_zeros(flat.numel(), d_model)
    for low, high, (table, projection) in zip(boundaries[:-1], boundaries[1:], clusters, strict=True):
        rows = ((flat >= low) & (flat < high)).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        vectors = F.embedding(flat[rows] - low, table)
        if projection is not None:
            vectors = vectors @ projection
        embedded = embedded.index_copy(0, rows, vectors.to(embedded.dtype))
    return embedded.view(*tokens.shape, d_model)


def softmax_clusters(softmax: nn.AdaptiveLogSoftmaxWithLoss) -> list[Cluster]:
    """The input clusters tied to an adaptive softmax: the head's first ``c_1`` rows (width
    ``d_model``), then per tail ``(E_i, P_i)`` = (its output weight, its input weight)."""
    clusters: list[Cluster] = [(softmax.head.weight[: softmax.shortlist_size], None)]
    for tail in softmax.tail:
        to_hidden, to_cluster = tail[0], tail[1]
        clusters.append((to_cluster.weight, to_hidden.weight))
    return clusters


class AdaptiveInput(nn.Module):
    """Untied adaptive input embedding with its own tables (normal init, std ``h_i^{-1/2}``) and
    bias-free projections. ``forward``: tokens ``[...]`` → ``[..., d_model]``."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div_value: float = 1.0) -> None:
        super().__init__()
        cutoffs = check_cutoffs(cutoffs, vocab_size)
        self.boundaries = [0, *cutoffs, vocab_size]
        self.tables = nn.ParameterList()
        self.projections = nn.ParameterList()
        for index, (low, high) in enumerate(zip(self.boundaries[:-1], self.boundaries[1:], strict=True)):
            width = cluster_width(d_model, div_value, index)
            self.tables.append(nn.Parameter(torch.randn(high - low, width) * width**-0.5))
            if index > 0:
                self.projections.append(nn.Parameter(torch.randn(width, d_model) * width**-0.5))

    def clusters(self) -> list[Cluster]:
        """``(table, projection)`` per cluster; cluster 0 has no projection."""
        return [(self.tables[0], None)] + [
            (table, projection) for table, projection in zip(self.tables[1:], self.projections, strict=True)
        ]

    def forward(self, tokens: Tensor) -> Tensor:
        return adaptive_embedding(tokens, self.boundaries, self.clusters())
