"""Attention modules and the registry: softmax and fast-weight cores, multi-head attention."""

from fwp.attention.base import AttentionCore, AttentionSpec, AttentionState
from fwp.attention.fast_weight import FastWeightAttention
from fwp.attention.multihead import MultiHeadAttention
from fwp.attention.registry import available_attentions, build_attention, register_attention
from fwp.attention.softmax import KVCache, SoftmaxAttention

__all__ = [
    "AttentionCore",
    "AttentionSpec",
    "AttentionState",
    "FastWeightAttention",
    "KVCache",
    "MultiHeadAttention",
    "SoftmaxAttention",
    "available_attentions",
    "build_attention",
    "register_attention",
]
