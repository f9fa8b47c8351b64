"""Multi-head attention around any registered core: projections in, output projection out.

Self-attention projects ``x`` ``[B, T, d_model]`` with one bias-free linear map to, per head,
``[q, k, v]`` (``3·d_head`` units) plus, for cores that use it, one β unit: ``β = sigmoid(·)`` (times
the core's ``beta_scale``), one write strength per head and position (docs/attention.md). Cores of the
DeltaNet family ask for more (``fwp.attention.parametrisation``): a short causal convolution on q, k, v
(the layer's state then carries its last inputs: ``FastWeightState.conv``), Gated DeltaNet's decay from ``x``,
and a gated RMSNorm of every head's output. Cross-attention takes q from ``x`` and k, v
(β) from ``memory`` ``[B, S, d_model]``. Packed sequences (``cu_seqlens``, ``fwp.attention.base``): ``x``
``[1, T, d_model]`` holds ``N`` sequences end to end; the projections, decay and gate are token-wise, the
short convolution restarts at every sequence (its carried inputs one row per sequence) and the core
attends within each sequence. Outputs are scaled by the core's ``output_scale`` (``1/√d_head``
for fast weights); then a bias-free output projection ``H·d_head → d_model`` and dropout. Residual and
normalisation belong to the block.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from fwp.attention.base import AttentionCore, AttentionSpec, AttentionState
from fwp.attention.parametrisation import GatedDeltaNetDecay, GatedOutputNorm, ShortConvolution
from fwp.attention.registry import build_attention
from fwp.ops import checked_layout, packed_layouts, sequence_lengths


def _check_sequence(name: str, x: Tensor, d_model: int) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must be [B, T, d_model={d_model}], got shape {tuple(x.shape)}")


def _check_padding_mask(mask: Tensor, keys: Tensor) -> None:
    expected = tuple(keys.shape[:2])
    if mask.dtype != torch.bool or tuple(mask.shape) != expected:
        raise ValueError(
            f"key_padding_mask must be a bool tensor [B, T_k] = {expected}, "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )


def _check_packed(name: str, x: Tensor, cu_seqlens: Tensor | None) -> None:
    """A ValueError unless ``x`` ``[1, T, d_model]`` holds the packed sequences of ``cu_seqlens`` (checked
    once per offsets tensor: ``fwp.ops.checked_layout`` remembers it for the other layers and the core)."""
    if cu_seqlens is None:
        return
    if x.shape[0] != 1:
        raise ValueError(
            f"cu_seqlens packs N sequences into batch B = 1, got {name} of shape {tuple(x.shape)}"
        )
    offsets = "cu_seqlens" if name == "x" else "memory_cu_seqlens"
    checked_layout(cu_seqlens, x.shape[1], x.device, offsets, "one batch")


class MultiHeadAttention(nn.Module):
    """``H`` heads of the core built from ``attention`` (a registry spec), each of size ``d_head``
    (default ``d_model // n_heads``).

    ``causal`` applies to self-attention; cross-attention (``cross=True``) is always non-causal and
    needs a core that supports it.
    """

    core: AttentionCore

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attention: AttentionSpec = "softmax",
        *,
        d_head: int | None = None,
        dropout: float = 0.0,
        causal: bool = True,
        cross: bool = False,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be >= 1, got d_model={d_model}, n_heads={n_heads}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(
                    f"d_model={d_model} is not divisible by n_heads={n_heads}; give d_head explicitly"
                )
            d_head = d_model // n_heads
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
        self.core = build_attention(attention, d_head)
        self.core.in_layer = True
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.cross = cross
        self.causal = causal and not cross
        modes = ("bidirectional", "read") if cross else ("causal" if causal else "bidirectional",)
        use = "cross-attention" if cross else f"causal={causal}"
        for mode in modes:
            self.core.require_mode(mode, f"{use} with attention={attention!r}")
        self.beta_sizes = (1,) if self.core.uses_beta else ()
        if cross and self.core.short_conv:
            raise ValueError(
                f"cross-attention with attention={attention!r}: the short convolution runs along the "
                "sequence of a causal self-attention layer; use short_conv: 0"
            )
        channels = 3 * n_heads * d_head
        self.conv = ShortConvolution(channels, self.core.short_conv) if self.core.short_conv else None
        self.decay = GatedDeltaNetDecay(d_model, n_heads) if self.core.decay else None
        self.output_norm = GatedOutputNorm(d_model, n_heads, d_head) if self.core.output_gate else None
        if cross:
            self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=False)
            self.kv_proj = nn.Linear(d_model, n_heads * (2 * d_head + len(self.beta_sizes)), bias=False)
        else:
            self.qkv_proj = nn.Linear(d_model, n_heads * (3 * d_head + len(self.beta_sizes)), bias=False)
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, projected: Tensor, sizes: tuple[int, ...]) -> list[Tensor]:
        """``[B, T, H·Σ sizes]`` → one ``[B, H, T, size]`` tensor per size (units are grouped per head)."""
        B, T, _ = projected.shape
        heads = projected.view(B, T, self.n_heads, sum(sizes)).transpose(1, 2)
        return list(heads.split(sizes, dim=-1))

    def write_strength(self, beta_unit: list[Tensor]) -> Tensor | None:
        """``β = sigmoid(unit)`` ``[B, H, T]`` from the optional ``[B, H, T, 1]`` β unit, times the core's
        ``beta_scale`` (2 with ``allow_negative_eigenvalues``: β ∈ (0, 2))."""
        if not beta_unit:
            return None
        beta = torch.sigmoid(beta_unit[0].squeeze(-1))
        return beta if self.core.beta_scale == 1.0 else self.core.beta_scale * beta

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        state: AttentionState | None = None,
        key_padding_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        memory_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, AttentionState]:
        """x ``[B, T, d_model]`` → ``[B, T, d_model]`` and the core's state.

        Self-attention: ``state`` (from a previous call) is continued — segment carry, or generation
        one token at a time; key_padding_mask ``[B, T]`` marks padded positions of ``x`` (a softmax
        KV cache remembers the masks of earlier calls; padded positions never enter a fast weight).
        Cross-attention: without ``state``, k, v come from ``memory`` ``[B, S, d_model]`` and
        key_padding_mask ``[B, S]`` marks padded memory positions; the returned state holds the
        memory's keys, so later calls given that ``state`` only read it (``memory`` and the mask are
        then not used: the state already has them).
        Packed sequences: ``cu_seqlens`` ``[N + 1]`` are the offsets of ``x`` ``[1, T, d_model]``;
        cross-attention also needs ``memory_cu_seqlens``, those of ``memory`` ``[1, S, d_model]`` (the same
        ``N``: query sequence ``n`` attends only to memory sequence ``n``). A state then holds ``N`` rows.
        """
        _check_sequence("x", x, self.d_model)
        _check_packed("x", x, cu_seqlens)
        if self.cross:
            y, state = self._cross_attend(x, memory, state, key_padding_mask, cu_seqlens, memory_cu_seqlens)
        else:
            if memory is not None or memory_cu_seqlens is not None:
                raise ValueError(
                    "memory and memory_cu_seqlens are only used by cross-attention (cross=True), got "
                    + ("a memory tensor" if memory is not None else "memory_cu_seqlens")
                )
            if key_padding_mask is not None:
                _check_padding_mask(key_padding_mask, x)
            y, state = self._self_attend(x, state, key_padding_mask, cu_seqlens)
        return self.merge_heads(y, x), state

    def _self_attend(
        self,
        x: Tensor,
        state: AttentionState | None,
        key_padding_mask: Tensor | None,
        cu_seqlens: Tensor | None,
    ) -> tuple[Tensor, AttentionState]:
        q, k, v, *beta_unit = self.split_heads(self.qkv_proj(x), (self.d_head,) * 3 + self.beta_sizes)
        packed = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        if self.conv is not None:
            past = self._convolution_state(state)
            (q, k, v), past = self.convolve(q, k, v, past, key_padding_mask, cu_seqlens)
        gated = {} if self.decay is None else {"log_decay": self.decay(x)}
        y, state = self.core(
            q,
            k,
            v,
            self.write_strength(beta_unit),
            causal=self.causal,
            state=state,
            key_padding_mask=key_padding_mask,
            **packed,
            **gated,
        )
        return y, state if self.conv is None else replace(state, conv=past)

    @staticmethod
    def _convolution_state(state: AttentionState | None) -> Tensor | None:
        """The convolution's past inputs in a continued state (None: a new sequence)."""
        if state is None:
            return None
        if getattr(state, "conv", None) is None:
            raise ValueError(
                "a layer with a short convolution continues a FastWeightState holding the convolution's "
                f"last inputs (conv), got a {type(state).__name__} without them"
            )
        return state.conv

    def convolve(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        past: Tensor | None,
        key_padding_mask: Tensor | None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The short convolution (+ SiLU) over the channels of q, k, v ``[B, H, T, d_head]`` each, padded
        positions entering as zeros; returns the three and the convolution's new past inputs. Packed
        sequences (``cu_seqlens``, ``B = 1``) are convolved as ``N`` rows, so that no window reaches
        into the previous sequence; ``past`` and the new past then hold ``N`` rows ``[N, K − 1, C]``."""
        B, H, T, d = q.shape
        channels = torch.cat([q, k, v], dim=-1).transpose(1, 2).reshape(B, T, H * 3 * d)
        if key_padding_mask is not None:
            channels = channels * (~key_padding_mask).unsqueeze(-1).to(channels.dtype)
        if cu_seqlens is None:
            out, past = self.conv(channels, past)
        else:
            packed = channels.unsqueeze(1)  # [1, 1, T, C]
            layout, _ = packed_layouts(packed, packed, cu_seqlens, one_batch=True)
            (rows,) = layout.unpack(packed)  # [N, 1, T_max, C], padded at the end
            out, past = self.conv(rows.squeeze(1), past, lengths=sequence_lengths(cu_seqlens))
            out = layout.pack([out.unsqueeze(1)]).squeeze(1)
        q, k, v = out.view(B, T, H, 3 * d).transpose(1, 2).split(d, dim=-1)
        return (q, k, v), past

    def _cross_attend(
        self,
        x: Tensor,
        memory: Tensor | None,
        state: AttentionState | None,
        key_padding_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        memory_cu_seqlens: Tensor | None,
    ) -> tuple[Tensor, AttentionState]:
        (q,) = self.split_heads(self.q_proj(x), (self.d_head,))
        if state is not None:
            if cu_seqlens is None:
                return self.core.read(q, state), state
            queries, _ = packed_layouts(q, q, cu_seqlens, one_batch=True)  # sequence n reads memory row n
            return queries.pack([self.core.read(queries.unpack(q)[0], state)]), state
        if (cu_seqlens is None) != (memory_cu_seqlens is None):
            raise ValueError(
                "cross-attention over packed sequences needs the offsets of both the queries (cu_seqlens) "
                "and the memory (memory_cu_seqlens), got only "
                + ("cu_seqlens" if memory_cu_seqlens is None else "memory_cu_seqlens")
            )
        packed = {}
        if cu_seqlens is not None:
            packed = {"cu_seqlens": memory_cu_seqlens, "query_cu_seqlens": cu_seqlens}
        if memory is None:
            raise ValueError("cross-attention needs memory [B, S, d_model] or the state of a previous call")
        _check_sequence("memory", memory, self.d_model)
        _check_packed("memory", memory, memory_cu_seqlens)
        if key_padding_mask is not None:
            _check_padding_mask(key_padding_mask, memory)
        k, v, *beta_unit = self.split_heads(self.kv_proj(memory), (self.d_head,) * 2 + self.beta_sizes)
        return self.core(
            q,
            k,
            v,
            self.write_strength(beta_unit),
            causal=False,
            key_padding_mask=key_padding_mask,
            **packed,
        )

    def merge_heads(self, y: Tensor, x: Tensor | None = None) -> Tensor:
        """``[B, H, T, d_head]`` → scale (1/√d_head for fast weights) → with ``output_gate``, every head
        RMS-normalised and gated by ``silu(x W_g)`` (x ``[B, T, d_model]``, the layer's input) → output
        projection → dropout → ``[B, T, d_model]``."""
        B, H, T, d = y.shape
        y = y * self.core.output_scale
        if self.output_norm is not None:
            y = self.output_norm(y, x)
        out = self.out_proj(y.transpose(1, 2).reshape(B, T, H * d))
        return self.dropout(out) if self.training and self.dropout.p > 0 else out
