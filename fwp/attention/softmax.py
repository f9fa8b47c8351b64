"""Softmax attention, the baseline with unbounded memory, and its key/value cache.

``y_i = Σ_j softmax_j(q_i · k_j / √d_head) v_j`` over the keys query ``i`` may see: all of them
(bidirectional) or, causally, the cached keys and the new keys up to its own position. Padded keys
(key_padding_mask True) are never seen; a query that sees no key at all outputs zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fwp.attention.base import AttentionCore


@dataclass
class KVCache:
    """Keys and values seen so far: ``k``, ``v``: ``[B, H, T_cache, d_head]``; ``padding``: ``[B, T_cache]``
    (True = pad) or None when no cached position is padding."""

    k: Tensor
    v: Tensor
    padding: Tensor | None = None

    def detach(self) -> KVCache:
        """The same cache cut from the autograd graph."""
        return KVCache(self.k.detach(), self.v.detach(), self.padding)

    def index_select(self, index: Tensor) -> KVCache:
        """Reorder or repeat batch rows (beam search): ``index`` is ``[B']`` into dim 0."""
        padding = None if self.padding is None else self.padding.index_select(0, index)
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index), padding)

    def append(self, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> KVCache:
        """The cache extended by new keys/values ``[B, H, T_new, d_head]`` and their mask ``[B, T_new]``."""
        return KVCache(
            torch.cat([self.k, k], dim=2),
            torch.cat([self.v, v], dim=2),
            concat_padding(self.padding, key_padding_mask, self.k.shape[2], k.shape[2]),
        )


def concat_padding(old: Tensor | None, new: Tensor | None, t_old: int, t_new: int) -> Tensor | None:
    """The padding mask ``[B, t_old + t_new]`` of two consecutive key ranges (None = no padding)."""
    if old is None and new is None:
        return None
    reference = old if old is not None else new
    batch, device = reference.shape[0], reference.device
    old = old if old is not None else torch.zeros(batch, t_old, dtype=torch.bool, device=device)
    new = new if new is not None else torch.zeros(batch, t_new, dtype=torch.bool, device=device)
    return torch.cat([old, new], dim=1)


class SoftmaxAttention(AttentionCore):
    """Scaled dot-product attention with scale ``1/√d_head``.

    Options: ``dropout`` — attention-probability dropout, applied in training only.
    With a ``KVCache`` state, ``forward`` appends the new keys and values; causally, new query ``i``
    of ``T_new`` sees the ``T_cache`` cached keys and the new keys ``0..i`` — so a prefill followed by
    ``T = 1`` steps equals one parallel call. ``key_padding_mask`` ``[B, T_k]`` refers to the keys of
    this call; the cache remembers the masks of earlier calls.
    """

    def __init__(self, d_head: int, *, dropout: float = 0.0) -> None:
        super().__init__(d_head)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
        self.dropout = dropout
        self.scale = 1.0 / math.sqrt(d_head)

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, dropout={self.dropout}"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor | None = None,
        *,
        causal: bool = True,
        state: KVCache | None = None,
        key_padding_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        query_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, KVCache]:
        """q ``[B, H, T_q, d]``, k, v ``[B, H, T_k, d]`` → ``[B, H, T_q, d]`` and the cache of all keys.

        Packed sequences (``cu_seqlens``; ``fwp.attention.base``) attend as a padded batch of ``N``
        rows (``attend_padded``: the block-diagonal mask without its ``T²`` cost); the cache then holds
        ``N`` rows, their padding masked."""
        if beta is not None:
            raise ValueError("SoftmaxAttention does not use beta, got a beta tensor")
        if cu_seqlens is not None or query_cu_seqlens is not None:
            return self.attend_padded(
                q,
                k,
                v,
                None,
                cu_seqlens=cu_seqlens,
                query_cu_seqlens=query_cu_seqlens,
                key_padding_mask=key_padding_mask,
                causal=causal,
                state=state,
            )
        cache = KVCache(k, v, key_padding_mask) if state is None else state.append(k, v, key_padding_mask)
        return self.attend(q, cache, causal=causal), cache

    def read(self, q: Tensor, state: KVCache) -> Tensor:
        """Every query attends over all cached keys, none added: ``[B, H, T_q, d]``."""
        return self.attend(q, state, causal=False)

    def attend(self, q: Tensor, cache: KVCache, *, causal: bool) -> Tensor:
        """Queries ``[B, H, T_q, d]`` over the keys of ``cache``, the last ``T_q`` of them aligned with
        the queries when ``causal``."""
        dropout_p = self.dropout if self.training else 0.0
        t_q, t_k = q.shape[2], cache.k.shape[2]
        if cache.padding is None and (not causal or t_q == t_k):
            return F.scaled_dot_product_attention(
                q, cache.k, cache.v, dropout_p=dropout_p, is_causal=causal, scale=self.scale
            )
        allowed = torch.ones(1, 1, t_q, t_k, dtype=torch.bool, device=q.device)
        if cache.padding is not None:
            allowed = allowed & ~cache.padding[:, None, None, :]
        if causal:
            query_positions = torch.arange(t_q, device=q.device)[:, None] + (t_k - t_q)
            allowed = allowed & (torch.arange(t_k, device=q.device)[None, :] <= query_positions)
        sees_nothing = ~allowed.any(dim=-1, keepdim=True)
        y = F.scaled_dot_product_attention(
            q, cache.k, cache.v, attn_mask=allowed | sees_nothing, dropout_p=dropout_p, scale=self.scale
        )
        return y.masked_fill(sees_nothing, 0.0)
