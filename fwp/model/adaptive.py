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
from typing import Any

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
    ``clusters[i]`` embeds the tokens in ``[boundaries[i], boundaries[i+1])``.

    Every cluster embeds every token (its index clamped into the table) and ``where`` keeps the tokens
    that lie in it: static shapes, so the embedding compiles into one graph; the other tokens pass a
    zero gradient to row 0 or the last row of each table, which changes no gradient."""
    check_token_range("tokens", tokens, boundaries[-1])
    embedded: Tensor | None = None
    for low, high, (table, projection) in zip(boundaries[:-1], boundaries[1:], clusters, strict=True):
        vectors = F.embedding((tokens - low).clamp(0, high - low - 1), table)
        if projection is not None:
            vectors = vectors @ projection
        if embedded is None:
            embedded = vectors
        else:
            inside = ((tokens >= low) & (tokens < high)).unsqueeze(-1)
            embedded = torch.where(inside, vectors, embedded)
    return embedded


def check_token_range(name: str, tokens: Tensor, vocab_size: int) -> None:
    """A ValueError unless every id in ``tokens`` is in ``[0, vocab_size)``. Skipped inside
    ``torch.compile`` (reading the values would break the graph); there an id out of range fails the
    compiled kernel's bounds check instead (a RuntimeError ``index out of bounds``)."""
    if torch.compiler.is_compiling() or not tokens.numel():
        return
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        raise ValueError(
            f"{name} must be in [0, vocab_size={vocab_size}), got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


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
        projections = [self.projection(i) for i in range(len(self.tables))]
        return [
            (table, None if projection is None else projection.transpose(0, 1))
            for table, projection in zip(self.tables, projections, strict=True)
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

    def output_layer(self, cluster: int) -> tuple[Tensor, Tensor]:
        """The weight ``[|cluster| (+ n for the head), h_i]`` and bias of ``cluster``'s scores: ``E_i``,
        ``b_i``; for the head ``cat(E_0, C)`` and ``cat(b_0, c)``."""
        weight, bias = self.tables[cluster], self.biases[cluster]
        if cluster == 0:
            weight = torch.cat([weight, self.cluster_weight])
            bias = torch.cat([bias, self.cluster_bias])
        return weight, bias

    def project(self, hidden: Tensor, cluster: int) -> Tensor:
        """``h P_i`` ``[N, h_i]`` (``h`` itself when ``h_i = d_model``)."""
        projection = self.projection(cluster)
        return hidden if projection is None else hidden @ projection

    def logits(self, hidden: Tensor, cluster: int) -> Tensor:
        """Scores ``[N, |cluster| (+ n for the head)]`` of ``hidden`` ``[N, d_model]``: ``h P_i E_iᵀ + b_i``,
        for cluster 0 followed by the cluster logits ``h P_0 Cᵀ + c``."""
        return F.linear(self.project(hidden, cluster), *self.output_layer(cluster))

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
        """``log p(target | h)`` ``[N]`` for ``hidden`` ``[N, d_model]`` and ``targets`` ``[N]``.

        Every row's head term is ``log_softmax(head logits)`` at its target's head column (the token
        itself in the shortlist, else its cluster's column); a tail cluster is scored only for the rows
        whose target lies in it, and its term is added to theirs. Each term is a
        ``target_log_softmax``, whose gradient is not built from dense zeros of the whole vocabulary.
        In eager, a tail cluster without targets is skipped (its table gets no gradient from here);
        compiled, it is scored on zero rows (a zero gradient), since a branch on the data would break
        the graph."""
        check_token_range("targets", targets, self.boundaries[-1])
        cluster = sum((targets >= cutoff).long() for cutoff in self.boundaries[1:-1])
        head_target = torch.where(cluster == 0, targets, self.boundaries[1] + self.n_clusters - cluster)
        result = target_log_softmax(self.project(hidden, 0), *self.output_layer(0), head_target)
        for i in range(1, self.n_clusters + 1):
            rows = (cluster == i).nonzero().squeeze(1)
            if not torch.compiler.is_compiling() and rows.numel() == 0:
                continue
            scored = target_log_softmax(
                self.project(hidden[rows], i), *self.output_layer(i), targets[rows] - self.boundaries[i]
            )
            result = result.index_add(0, rows, scored)
        return result


def target_log_softmax(hidden: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
    """``log_softmax(h Wᵀ + b)[target]`` ``[N]`` for ``hidden`` ``[N, h]``, ``weight`` ``[V, h]``, ``bias``
    ``[V]`` and ``target`` ``[N]`` (indices into ``V``), i.e. ``s_y − logsumexp(s)`` with ``s = h Wᵀ +
    b``. Its backward is written out: ``∂/∂s = g (onehot(y) − softmax(s))`` in one buffer (the saved
    scores, overwritten), where autograd through ``log_softmax`` and ``gather`` would fill and scatter
    a zero gradient of ``[N, V]`` for the gather besides. No double backward, and one backward per
    forward (a second, with ``retain_graph=True``, is refused: the first overwrote the scores)."""
    return TargetLogSoftmax.apply(hidden, weight, bias, target)


class TargetLogSoftmax(torch.autograd.Function):
    """The autograd function behind ``target_log_softmax``."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        scores = torch.addmm(bias, hidden, weight.t())
        peak = scores.amax(dim=1, keepdim=True)
        log_normalizer = (scores - peak).exp_().sum(dim=1, keepdim=True).log_() + peak
        ctx.save_for_backward(hidden, weight, target, scores, log_normalizer)
        ctx.scores_overwritten = False
        return scores.gather(1, target[:, None])[:, 0] - log_normalizer[:, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        if ctx.scores_overwritten:
            raise RuntimeError(
                "target_log_softmax's backward overwrites its saved scores, so it runs once per forward: "
                "a second backward through the same graph (retain_graph=True) is refused"
            )
        ctx.scores_overwritten = True
        hidden, weight, target, scores, log_normalizer = ctx.saved_tensors
        grad_scores = scores.sub_(log_normalizer).exp_().mul_(-grad[:, None])
        grad_scores.scatter_add_(1, target[:, None], grad[:, None])
        return grad_scores @ weight, grad_scores.t() @ hidden, grad_scores.sum(0), None


class AdaptiveInput(ClusterTables):
    """Untied adaptive input embedding (Transformer-XL's ``AdaptiveEmbedding``): its own tables and
    projections. ``forward``: tokens ``[...]`` → ``[..., d_model]``."""

    def forward(self, tokens: Tensor) -> Tensor:
        return adaptive_embedding(tokens, self.boundaries, self.clusters())
