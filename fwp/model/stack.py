"""What every model of the backbone is made of: the input encoding and a stack of blocks.

Input: ``x = Dropout(PE(√d_model · e(tokens)))`` where ``e`` is a token embedding (normal init, std
``d_model^{-1/2}``, so that ``√d_model · e`` has unit-variance entries like the sinusoids) and ``PE``
adds positional encodings (Vaswani et al. 2017; Transformer-XL's ``emb_scale``).
Stack: ``n_layers`` ``TransformerBlock``s, then one LayerNorm with pre-norm (post-norm blocks already
end normalised).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from fwp.attention import AttentionSpec
from fwp.model.block import TransformerBlock
from fwp.model.config import BlockConfig
from fwp.model.positions import Positional, positional_encoding
from fwp.ops import positions_in_sequence, validate_cu_seqlens


def token_embedding(vocab_size: int, d_model: int, *, padding_idx: int | None = None) -> nn.Embedding:
    """``nn.Embedding(vocab_size, d_model)`` with normal init of std ``d_model^{-1/2}`` (the padding row,
    if any, zero)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got vocab_size={vocab_size}")
    embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
    nn.init.normal_(embedding.weight, std=d_model**-0.5)
    if padding_idx is not None:
        nn.init.zeros_(embedding.weight[padding_idx])
    return embedding


class InputEncoding(nn.Module):
    """Embedded tokens ``[B, T, d_model]`` → ``Dropout(PE(√d_model · x))`` for positions from ``offset``,
    or with ``cu_seqlens`` (``B = 1``, packed sequences) positions restarting at 0 in every sequence."""

    def __init__(self, d_model: int, *, positional: Positional, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.positions = positional_encoding(positional, d_model, max_positions)
        self.dropout = nn.Dropout(dropout)

    def forward(self, embedded: Tensor, offset: int = 0, cu_seqlens: Tensor | None = None) -> Tensor:
        positions = None
        if cu_seqlens is not None:
            validate_cu_seqlens(cu_seqlens, embedded.shape[1])
            if embedded.shape[0] != 1:
                raise ValueError(f"cu_seqlens packs sequences into batch B = 1, got B = {embedded.shape[0]}")
            positions = positions_in_sequence(cu_seqlens)
        return self.dropout(self.positions(embedded * self.scale, offset, positions))


class TransformerStack(nn.Module):
    """``n_layers`` blocks of ``config`` with self-attention ``attention`` (and ``cross_attention``);
    ``forward(x, *, states, key_padding_mask, memory, memory_padding_mask, cu_seqlens,
    memory_cu_seqlens)`` → ``([B, T, d_model], states)`` with one state per block (see
    ``TransformerBlock``)."""

    def __init__(
        self,
        config: BlockConfig,
        n_layers: int,
        attention: AttentionSpec,
        *,
        causal: bool,
        cross_attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(config, attention, causal=causal, cross_attention=cross_attention)
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model) if config.norm == "pre" else nn.Identity()

    @property
    def bounded_state(self) -> bool:
        """True when every self-attention state has a size independent of the sequence length (fast
        weights, not a key/value cache), so that it can be carried along an unbounded stream."""
        return all(block.self_attention.core.is_fast_weight for block in self.blocks)

    def forward(
        self,
        x: Tensor,
        *,
        states: list | None = None,
        key_padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        memory_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        if states is None:
            states = [None] * len(self.blocks)
        elif len(states) != len(self.blocks):
            raise ValueError(f"states must have one entry per layer ({len(self.blocks)}), got {len(states)}")
        new_states = []
        for block, state in zip(self.blocks, states, strict=True):
            x, state = block(
                x,
                state=state,
                key_padding_mask=key_padding_mask,
                memory=memory,
                memory_padding_mask=memory_padding_mask,
                cu_seqlens=cu_seqlens,
                memory_cu_seqlens=memory_cu_seqlens,
            )
            new_states.append(state)
        return self.final_norm(x), new_states
