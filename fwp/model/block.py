"""A Transformer block: self-attention, optional cross-attention, feed-forward; residuals and LayerNorm.

Each sub-layer ``f`` (its output already dropped out) is wrapped as
- post-norm (Vaswani et al.; the paper's ICML runs): ``x ← LayerNorm(x + f(x))``;
- pre-norm: ``x ← x + f(LayerNorm(x))`` (the stack then ends with one more LayerNorm).
Feed-forward: ``Dropout(W_2 Dropout_a(act(W_1 x + b_1)) + b_2)``, ``d_model → d_ff → d_model``, with
the activation dropout ``Dropout_a`` at the residual rate unless ``activation_dropout`` is given
(Transformer-XL drops both; fairseq's WMT Transformers use ``activation_dropout = 0``).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from fwp.attention import AttentionSpec, AttentionState, MultiHeadAttention
from fwp.model.states import CrossBlockState

Norm = Literal["pre", "post"]
Activation = Literal["relu", "gelu"]
NORMS = ("pre", "post")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    """A ValueError naming ``option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {option}={value!r}")


class FeedForward(nn.Module):
    """Position-wise ``[B, T, d_model] → [B, T, d_model]`` through ``d_ff`` hidden units."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        dropout: float,
        activation: Activation,
        activation_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        if d_ff < 1:
            raise ValueError(f"d_ff must be >= 1, got d_ff={d_ff}")
        if activation_dropout is not None and not 0.0 <= activation_dropout < 1.0:
            raise ValueError(
                f"activation_dropout must be in [0, 1), got activation_dropout={activation_dropout}"
            )
        self.expand = nn.Linear(d_model, d_ff)
        self.contract = nn.Linear(d_ff, d_model)
        self.activation = ACTIVATIONS[activation]
        self.activation_dropout = nn.Dropout(dropout if activation_dropout is None else activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.contract(self.activation_dropout(self.activation(self.expand(x)))))


class TransformerBlock(nn.Module):
    """Self-attention (core from ``attention``) + optional cross-attention (core from
    ``cross_attention``, None = no cross-attention) + feed-forward, each residual and normalised.

    ``forward(x [B, T, d_model], *, state, key_padding_mask, memory, memory_padding_mask)`` returns
    ``[B, T, d_model]`` and the block's state: the self-attention state, or with cross-attention a
    ``CrossBlockState(self_state, cross_state)``. Given a ``CrossBlockState`` with a cross state, the
    memory is not re-encoded (``memory`` may be None).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        attention: AttentionSpec = "softmax",
        *,
        d_head: int | None = None,
        dropout: float = 0.1,
        activation_dropout: float | None = None,
        activation: Activation = "relu",
        norm: Norm = "post",
        causal: bool = True,
        cross_attention: AttentionSpec | None = None,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, NORMS)
        self.norm = norm
        self.self_attention = MultiHeadAttention(
            d_model, n_heads, attention, d_head=d_head, dropout=dropout, causal=causal
        )
        self.self_attention_norm = nn.LayerNorm(d_model)
        self.cross_attention: MultiHeadAttention | None = None
        if cross_attention is not None:
            self.cross_attention = MultiHeadAttention(
                d_model, n_heads, cross_attention, d_head=d_head, dropout=dropout, cross=True
            )
            self.cross_attention_norm = nn.LayerNorm(d_model)
        self.feed_forward = FeedForward(
            d_model, d_ff, dropout=dropout, activation=activation, activation_dropout=activation_dropout
        )
        self.feed_forward_norm = nn.LayerNorm(d_model)

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
    ) -> tuple[Tensor, AttentionState | CrossBlockState]:
        if self.cross_attention is None:
            self_state, cross_state = state, None
        else:
            self_state, cross_state = state if state is not None else CrossBlockState(None, None)
        h = self.sublayer_input(x, self.self_attention_norm)
        y, self_state = self.self_attention(h, state=self_state, key_padding_mask=key_padding_mask)
        x = self.sublayer_output(x, y, self.self_attention_norm)
        if self.cross_attention is not None:
            h = self.sublayer_input(x, self.cross_attention_norm)
            if cross_state is None:
                y, cross_state = self.cross_attention(h, memory=memory, key_padding_mask=memory_padding_mask)
            else:
                y, cross_state = self.cross_attention(h, state=cross_state)
            x = self.sublayer_output(x, y, self.cross_attention_norm)
        h = self.sublayer_input(x, self.feed_forward_norm)
        x = self.sublayer_output(x, self.feed_forward(h), self.feed_forward_norm)
        if self.cross_attention is None:
            return x, self_state
        return x, CrossBlockState(self_state, cross_state)
