"""The ``step`` backend: the recurrence one position at a time in the fewest tensor operations, the
backend ``auto`` picks for a single token (decoding) off CUDA.

Per position, on ``[B, H, 1, D]`` slices (row vectors, ``W``: ``[B, H, d_dot, d_v]``), with plain
``matmul``/``addcmul`` (no ``einsum``, no per-step reshapes):

- ``sum``:   ``W ← W + kᵀ v`` (one ``addcmul``), ``y = q W`` (one ``matmul``);
- ``delta``: ``r = k W``, ``w = β (v − r)``, ``W ← W + kᵀ w``, ``y = q W`` (five operations).

The same maths as ``fwp.ops.reference`` (its oracle), written for speed: ``fast_weight_step`` pays for
``einsum``'s permutes and for the per-step selects and the final stack that a ``[B, H, T, D]`` loop needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fwp.ops.state import FastWeightState


def step_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    chunk_size: int,
) -> tuple[Tensor, FastWeightState]:
    """``Backend`` of ``fwp.ops.dispatch``: q, k ``[B, H, T, d_dot]``, v ``[B, H, T, d_v]``, beta ``[B, H,
    T]`` (delta rule) → the numerator ``y_t = q_t W_t`` ``[B, H, T, d_v]`` and the final ``W``, one
    position after the other (``chunk_size`` unused)."""
    del chunk_size
    strength = None if beta is None else beta.unsqueeze(-1)  # [B, H, T, 1]
    inputs = (q, k, v) if strength is None else (q, k, v, strength)
    positions = [inputs] if q.shape[2] == 1 else zip(*(x.split(1, dim=2) for x in inputs), strict=True)
    W = state.W
    outputs = []
    for query, key, write, *position_strength in positions:
        if rule == "delta":
            write = (write - key @ W) * position_strength[0]
        W = torch.addcmul(W, key.transpose(-1, -2), write)
        outputs.append(query @ W)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return y, FastWeightState(W)
