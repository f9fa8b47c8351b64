"""The interface every attention core implements (softmax and fast-weight alike).

A *core* works on already projected heads; projections, output scaling and dropout belong to
``MultiHeadAttention``. Shapes: q ``[B, H, T_q, d_head]``, k ``[B, H, T_k, d_head]``, v ``[B, H, T_k,
d_head]``, beta ``[B, H, T_k]`` (cores with ``uses_beta``), key_padding_mask ``[B, T_k]`` (True = pad).

Two ways of running causally that agree to float tolerance:
- parallel: ``forward`` over a whole sequence (training, evaluation, prefill);
- step: ``forward`` on ``T = 1`` with the state returned by the previous call (generation).
``forward`` with a state continues that state (segment carry; KV cache for softmax).

The modes a core may run (``fwp.ops.MODES``): ``causal`` (``forward``), ``bidirectional``
(``forward(causal=False)``: every query sees every key; encoders and cross-attention) and ``read``
(``read(q, state)`` queries a memory without writing to it: retrieval queries, cached cross-attention).
A core lists the modes it cannot run in ``refused_modes``, each with the reason.

Packed sequences (``cu_seqlens``, ``fwp.ops.packing``): ``N`` sequences laid end to end in ``B = 1``,
q ``[1, H, T_q, d_head]``, k, v ``[1, H, T, d_head]``; ``cu_seqlens`` ``[N + 1]`` are the offsets of the
keys (and, causally, of the queries), ``query_cu_seqlens`` those of the queries when they differ
(cross-attention: the same ``N``). Every sequence attends only within itself, as if run alone; a state
holds one memory (or cache) per sequence. A core without a packed form of its own runs the call as a
padded batch ``[N, H, T_max, d_head]`` (``AttentionCore.attend_padded``: ``fwp.ops.PackedLayout.one_batch``,
row ``n`` sequence ``n``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, Self

from torch import Tensor, nn

from fwp.ops import packed_layouts


class AttentionState(Protocol):
    """What a core carries between calls: a fast weight memory or a key/value cache."""

    def detach(self) -> Self: ...

    def index_select(self, index: Tensor) -> Self: ...


AttentionSpec = str | dict[str, Any]
"""A registry name (``"delta"``), a name with options (``{"name": "performer", "m": 64}``), or a
``{"class_path": ..., "init_args": {...}}`` dict naming an ``AttentionCore`` subclass."""


class AttentionCore(nn.Module, ABC):
    """Attention over projected heads of size ``d_head``.

    Class attributes tell the surrounding module what the core needs:
    ``uses_beta`` — consumes a per-head, per-position write strength β (delta rule);
    ``refused_modes`` — the modes it cannot run, mode → reason (e.g. the delta rule: bidirectional);
    ``is_fast_weight`` — a fast-weight layer, whose output the paper scales by 1/√d_head
    (``output_scale``, applied by ``MultiHeadAttention``; a core may set its own).

    And what ``MultiHeadAttention`` builds around it (``fwp.attention.parametrisation``):
    ``short_conv`` — the kernel length of a causal depthwise convolution (+ SiLU) on q, k, v, 0 for none;
    ``decay`` — the core takes ``log_decay`` ``[B, H, T]`` in ``forward`` (Gated DeltaNet's decay);
    ``output_gate`` — every head's output is RMS-normalised and gated by ``silu(x W_g)``;
    ``beta_scale`` — β = ``beta_scale · sigmoid(·)`` (2: β ∈ (0, 2), negative eigenvalues).
    A core with any of these (``layer_parts``) runs only inside a ``MultiHeadAttention``, which sets
    ``in_layer``; called bare (a model that projects its own q, k, v) it refuses to run without them.
    """

    uses_beta: bool = False
    short_conv: int = 0
    decay: bool = False
    output_gate: bool = False
    beta_scale: float = 1.0
    in_layer: bool = False
    refused_modes: dict[str, str] = {}  # noqa: RUF012  (read-only; a core replaces it, never mutates it)
    is_fast_weight: bool = False

    def __init__(self, d_head: int) -> None:
        super().__init__()
        if d_head < 1:
            raise ValueError(f"d_head must be >= 1, got d_head={d_head}")
        self.d_head = d_head
        self.output_scale = d_head**-0.5 if self.is_fast_weight else 1.0

    @property
    def layer_parts(self) -> list[str]:
        """The options of this core that ``MultiHeadAttention`` implements (class docstring)."""
        parts = {
            f"short_conv={self.short_conv}": self.short_conv > 0,
            "decay=True": self.decay,
            "output_gate=True": self.output_gate,
            "allow_negative_eigenvalues=True": self.beta_scale != 1.0,
        }
        return [part for part, used in parts.items() if used]

    def require_layer(self) -> None:
        """A ValueError naming the parts when this core has ``layer_parts`` and is called bare."""
        if self.layer_parts and not self.in_layer:
            raise ValueError(
                f"{type(self).__name__} with {', '.join(self.layer_parts)} runs inside "
                "fwp.attention.MultiHeadAttention, which builds those parts; this model calls the core "
                "directly and would silently drop them"
            )

    def require_mode(self, mode: str, use: str) -> None:
        """A ValueError naming ``use`` (what needs the mode, e.g. ``cross-attention``) and the reason when
        this core refuses ``mode``."""
        if mode in self.refused_modes:
            raise ValueError(
                f"{use} needs the {mode} mode, which {type(self).__name__} cannot run: "
                f"{self.refused_modes[mode]}"
            )

    @abstractmethod
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor | None = None,
        *,
        causal: bool = True,
        state: AttentionState | None = None,
        key_padding_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        query_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, AttentionState]:
        """Attend; returns the output ``[B, H, T_q, d_head]`` and the state after the sequence (packed
        sequences: module docstring)."""

    def attend_padded(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor | None,
        *,
        cu_seqlens: Tensor,
        query_cu_seqlens: Tensor | None,
        key_padding_mask: Tensor | None,
        **options: object,
    ) -> tuple[Tensor, AttentionState]:
        """A packed call (module docstring) run as a padded batch: the ``N`` sequences gathered into
        ``[N, H, T_max, ·]`` rows, padded at the end (a ``key_padding_mask``), attended by ``forward``
        with ``options`` (``causal``, ``state``, …), the outputs gathered back to ``[1, H, T_q, d_head]``.
        Exact: padded keys are never seen, and a query at position ``i`` of its row sees what it would
        alone. The state holds ``N`` rows."""
        keys, queries = packed_layouts(q, k, cu_seqlens, query_cu_seqlens, key_padding_mask, one_batch=True)
        (q,), (k,), (v,) = queries.unpack(q), keys.unpack(k), keys.unpack(v)
        beta = None if beta is None else keys.unpack(beta)[0]
        y, state = self(q, k, v, beta, key_padding_mask=keys.paddings[0], **options)
        return queries.pack([y]), state

    @abstractmethod
    def read(self, q: Tensor, state: AttentionState) -> Tensor:
        """Query the memory in ``state`` without writing: ``[B, H, T_q, d_head]`` → same shape."""
