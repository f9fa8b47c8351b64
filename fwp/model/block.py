"""A Transformer block: self-attention, optional cross-attention, feed-forward; residuals and LayerNorm.

Each sub-layer ``f`` (its output already dropped out) is wrapped as
- post-norm (Vaswani et al.; the paper's ICML runs): ``x ← LayerNorm(x + f(x))``;
- pre-norm: ``x ← x + f(LayerNorm(x))`` (the stack then ends with one more LayerNorm).
Feed-forward: ``Dropout(W_2 Dropout_a(act(W_1 x + b_1)) + b_2)``, ``d_model → d_ff → d_model``, with
the activation dropout ``Dropout_a`` at the residual rate unless ``activation_dropout`` is given
(Transformer-XL drops both; fairseq's WMT Transformers use ``activation_dropout = 0``).
"""

from __future__ import annotations

from torch import Tensor, nn

from fwp.attention import AttentionSpec, AttentionState, MultiHeadAttention
from fwp.model.config import ACTIVATIONS, BlockConfig
from fwp.model.dropout import Dropout
from fwp.model.states import CrossBlockState


class FeedForward(nn.Module):
    """Position-wise ``[B, T, d_model] → [B, T, d_model]`` through ``config.d_ff`` hidden units."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        hidden_dropout = config.dropout if config.activation_dropout is None else config.activation_dropout
        self.expand = nn.Linear(config.d_model, config.d_ff)
        self.contract = nn.Linear(config.d_ff, config.d_model)
        self.activation = ACTIVATIONS[config.activation]
        self.activation_dropout = Dropout(hidden_dropout)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.contract(self.activation_dropout(self.activation(self.expand(x)))))


class TransformerBlock(nn.Module):
    """Self-attention (core from ``attention``) + optional cross-attention (core from
    ``cross_attention``, None = no cross-attention) + feed-forward, each residual and normalised, with
    the sizes, dropout, activation and norm of ``config``.

    ``forward(x [B, T, d_model], *, state, key_padding_mask, memory, memory_padding_mask, cu_seqlens,
    memory_cu_seqlens)`` returns ``[B, T, d_model]`` and the block's state (packed sequences: the
    offsets of ``x`` and ``memory``, ``fwp.attention.MultiHeadAttention``): the self-attention state, or
    with cross-attention a ``CrossBlockState(self_state, cross_state)``. Given a ``CrossBlockState``
    with a cross state, the memory is not re-encoded (``memory`` may be None).
    """

    def __init__(
        self,
        config: BlockConfig,
        attention: AttentionSpec = "softmax",
        *,
        causal: bool = True,
        cross_attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        self.norm = config.norm
        heads = {"d_head": config.d_head, "dropout": config.dropout}
        self.self_attention = MultiHeadAttention(
            config.d_model, config.n_heads, attention, causal=causal, **heads
        )
        self.self_attention_norm = nn.LayerNorm(config.d_model)
        self.cross_attention: MultiHeadAttention | None = None
        if cross_attention is not None:
            self.cross_attention = MultiHeadAttention(
                config.d_model, config.n_heads, cross_attention, cross=True, **heads
            )
            self.cross_attention_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = FeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.d_model)

    def sublayer_input(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        """What a sub-layer reads: ``LayerNorm(x)`` with pre-norm, ``x`` with post-norm."""
        return norm(x) if self.norm == "pre" else x

    def sublayer_output(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        """The residual sum ``x + y`` of the sub-layer output ``y``, normalised with post-norm."""
        return norm(x + y) if self.norm == "post" else x + y

    def forward(
        self,
        x: Tensor,
        *,
        state: AttentionState | CrossBlockState | None = None,
        key_padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        memory_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, AttentionState | CrossBlockState]:
        if self.cross_attention is None:
            self_state, cross_state = state, None
        else:
            self_state, cross_state = state if state is not None else CrossBlockState(None, None)
        h = self.sublayer_input(x, self.self_attention_norm)
        y, self_state = self.self_attention(
            h, state=self_state, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens
        )
        x = self.sublayer_output(x, y, self.self_attention_norm)
        if self.cross_attention is not None:
            h = self.sublayer_input(x, self.cross_attention_norm)
            if cross_state is None:
                y, cross_state = self.cross_attention(
                    h,
                    memory=memory,
                    key_padding_mask=memory_padding_mask,
                    cu_seqlens=cu_seqlens,
                    memory_cu_seqlens=memory_cu_seqlens,
                )
            else:
                y, cross_state = self.cross_attention(h, state=cross_state, cu_seqlens=cu_seqlens)
            x = self.sublayer_output(x, y, self.cross_attention_norm)
        h = self.sublayer_input(x, self.feed_forward_norm)
        x = self.sublayer_output(x, self.feed_forward(h), self.feed_forward_norm)
        if self.cross_attention is None:
            return x, self_state
        return x, CrossBlockState(self_state, cross_state)
