"""Non-causal (bidirectional) fast-weight read-out: every query reads the memory written by all keys.

Only the sum rule has an order-free final memory, so only it is offered here:
``W = Σ_j φ(k_j)^T v_j``, ``z = Σ_j φ(k_j)``, ``y_i = φ(q_i) W`` (÷ ``φ(q_i)·z + ε`` with a denominator).
Both run in float32 (float64 when given float64) with autocast off, like the recurrences.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fwp.ops.dispatch import compute_dtype
from fwp.ops.state import FastWeightState


def sum_rule_memory(
    k: Tensor, v: Tensor, *, denominator: bool, key_padding_mask: Tensor | None = None
) -> FastWeightState:
    """The memory written by a whole sequence under the sum rule.

    k: ``[B, H, S, d_dot]`` (feature-mapped); v: ``[B, H, S, d_v]``; key_padding_mask: ``[B, S]``,
    True at padding positions, which write nothing. Returns ``W`` ``[B, H, d_dot, d_v]`` (+ ``z``).
    """
    dtype = compute_dtype(k, v)
    k, v = k.to(dtype), v.to(dtype)
    with torch.autocast(device_type=k.device.type, enabled=False):
        if key_padding_mask is not None:
            keep = (~key_padding_mask).to(dtype)[:, None, :, None]
            k = k * keep
        W = torch.einsum("bhsd,bhsv->bhdv", k, v)
        z = k.sum(dim=2) if denominator else None
    return FastWeightState(W, z)


def read_memory(q: Tensor, memory: FastWeightState, *, eps: float) -> Tensor:
    """``y = φ(q) W`` (÷ ``φ(q)·z + ε`` when the memory has ``z``); q: ``[B, H, T, d_dot]`` →
    ``[B, H, T, d_v]`` in the memory's dtype, with autocast off (like the recurrences)."""
    q = q.to(memory.W.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        y = torch.einsum("bhtd,bhdv->bhtv", q, memory.W)
        if memory.z is not None:
            y = y / (torch.einsum("bhtd,bhd->bht", q, memory.z).unsqueeze(-1) + eps)
    return y
