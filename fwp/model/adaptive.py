"""Adaptive softmax (Grave et al. 2017) in Transformer-XL's layout, and adaptive input embeddings
(Baevski & Auli 2019) tied to it or on their own.

The vocabulary (sorted by frequency) is split by cutoffs ``c_1 < … < c_n`` into clusters
``[0, c_1), [c_1, c_2), …, [c_n, V)``. Cluster ``i`` has width ``h_i = ⌊d_model / div^i⌋``, a table
``E_i ∈ R^{|cluster i| × h_i}``, an output bias ``b_i`` and, when ``h_i < d_model``, a projection
``P_i ∈ R^{d_model × h_i}``. With ``div = 1`` (the paper's WikiText-103 runs) the tables are the row
blocks of one ``V × d_model`` matrix with one bias over the vocabulary, and there are no projections.

Softmax (Transformer-XL's ``ProjectedAdaptiveLogSoftmax``): the head scores the ``c_1`` shortlist tokens
and one logit per tail cluster, ``[h P_0 E_0ᵀ + b_0, h P_0 Cᵀ + c]`` with cluster weights ``C`` ``[n,
h_0]`` and biases ``c`` ``[n]``; tail cluster ``i`` is scored by head column ``c_1 + n − i`` (Transformer-
XL's ``head_logprob[:, -i]``), so ``log p(t) = log p_head(t)`` for ``t < c_1`` and
``log p_head(column of i) + log softmax(h P_i E_iᵀ + b_i)[t − c_i]`` for ``t`` in cluster ``i ≥ 1``.
Tied input: ``e(t) = E_i[t − c_i] P_iᵀ`` (``E_i[t − c_i]`` when there is no projection).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Cluster = tuple[Tensor, Tensor | None]
"""An embedding table ``[size, h]`` and its projection ``[h, d_model]`` (None when h = d_model)."""

LEGACY_SOFTMAX_KEY = "adaptive_softmax.head.weight"
"""A parameter of the earlier layout (``nn.AdaptiveLogSoftmaxWithLoss``), which this one cannot load."""


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


class ClusterTables(nn.Module):
    """The per-cluster tables ``E_i`` ``[|cluster i|, h_i]`` (``tables``) and projections ``P_i`` ``[d_model,
    h_i]`` of the clusters with ``h_i < d_model`` (``projections``) that the adaptive input and softmax
    share (module docstring). Initialised normal with std ``h_i^{-1/2}`` and ``d_model^{-1/2}``."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div_value: float = 1.0) -> None:
        super().__init__()
        cutoffs = check_cutoffs(cutoffs, vocab_size)
        self.boundaries = [0, *cutoffs, vocab_size]
        widths = [cluster_width(d_model, div_value, i) for i in range(len(cutoffs) + 1)]
        sizes = [high - low for low, high in itertools.pairwise(self.boundaries)]
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn(n, h) * h**-0.5) for n, h in zip(sizes, widths, strict=True)
        )
        self.projected = [h < d_model for h in widths]
        self.projections = nn.ParameterList(
            nn.Parameter(torch.randn(d_model, h) * d_model**-0.5) for h in widths if h < d_model
        )

    def projection(self, cluster: int) -> Tensor | None:
        """``P_i`` ``[d_model, h_i]`` of ``cluster``, or None when ``h_i = d_model``."""
        if not self.projected[cluster]:
            return None
        return self.projections[sum(self.projected[:cluster])]

    def clusters(self) -> list[Cluster]:
        """The input clusters: ``(E_i, P_iᵀ)`` (``(E_i, None)`` without a projection)."""
        return [
            (table, None if (projection := self.projection(i)) is None else projection.transpose(0, 1))
            for i, table in enumerate(self.tables)
        ]


class AdaptiveLogSoftmax(ClusterTables):
    """Transformer-XL's adaptive softmax (module docstring) over ``vocab_size`` tokens for hidden states
    of size ``d_model``: ``ClusterTables`` plus ``biases[i]`` ``[|cluster i|]``, ``cluster_weight`` ``[n,
    h_0]`` and ``cluster_bias`` ``[n]``. ``log_prob`` and ``target_log_prob`` take ``[N, d_model]``; a tied
    input embedding reads ``clusters()``."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div_value: float = 1.0) -> None:
        super().__init__(vocab_size, d_model, cutoffs, div_value)
        self.n_clusters = len(self.boundaries) - 2
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(t.shape[0])) for t in self.tables)
        width = self.tables[0].shape[1]
        self.cluster_weight = nn.Parameter(torch.randn(self.n_clusters, width) * width**-0.5)
        self.cluster_bias = nn.Parameter(torch.zeros(self.n_clusters))

    def logits(self, hidden: Tensor, cluster: int) -> Tensor:
        """Scores ``[N, |cluster| (+ n for the head)]`` of ``hidden`` ``[N, d_model]``: ``h P_i E_iᵀ + b_i``,
        for cluster 0 followed by the cluster logits ``h P_0 Cᵀ + c``."""
        weight, bias = self.tables[cluster], self.biases[cluster]
        if cluster == 0:
            weight = torch.cat([weight, self.cluster_weight])
            bias = torch.cat([bias, self.cluster_bias])
        projection = self.projection(cluster)
        if projection is not None:
            hidden = hidden @ projection
        return F.linear(hidden, weight, bias)

    def head_column(self, cluster: int) -> int:
        """The head column of tail cluster ``i ≥ 1``: ``c_1 + n − i``."""
        return self.boundaries[1] + self.n_clusters - cluster

    def log_prob(self, hidden: Tensor) -> Tensor:
        """``log p(t | h)`` for every token: ``[N, d_model]`` → ``[N, V]``."""
        head = torch.log_softmax(self.logits(hidden, 0), dim=-1)
        parts = [head[:, : self.boundaries[1]]]
        for cluster in range(1, self.n_clusters + 1):
            tail = torch.log_softmax(self.logits(hidden, cluster), dim=-1)
            parts.append(head[:, self.head_column(cluster), None] + tail)
        return torch.cat(parts, dim=-1)

    def target_log_prob(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """``log p(target | h)`` ``[N]`` for ``hidden`` ``[N, d_model]`` and ``targets`` ``[N]``; a tail
        cluster is scored only for the rows whose target lies in it."""
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.boundaries[-1]):
            raise ValueError(
                f"targets must be in [0, vocab_size={self.boundaries[-1]}), got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        head = torch.log_softmax(self.logits(hidden, 0), dim=-1)
        shortlist = targets < self.boundaries[1]
        result = head.gather(1, torch.where(shortlist, targets, 0)[:, None]).squeeze(1)
        for cluster in range(1, self.n_clusters + 1):
            low, high = self.boundaries[cluster], self.boundaries[cluster + 1]
            rows = ((targets >= low) & (targets < high)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            tail = torch.log_softmax(self.logits(hidden[rows], cluster), dim=-1)
            scored = (
                head[rows, self.head_column(cluster)] + tail.gather(1, (targets[rows] - low)[:, None])[:, 0]
            )
            result = result.index_copy(0, rows, scored)
        return result


class AdaptiveInput(ClusterTables):
    """Untied adaptive input embedding (Transformer-XL's ``AdaptiveEmbedding``): its own tables and
    projections. ``forward``: tokens ``[...]`` → ``[..., d_model]``."""

    def forward(self, tokens: Tensor) -> Tensor:
        return adaptive_embedding(tokens, self.boundaries, self.clusters())
