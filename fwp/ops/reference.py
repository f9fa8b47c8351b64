"""The plain recurrent form of every fast-weight rule: the oracle all faster backends are tested against.

One time step (docs/attention.md), per batch row and head, with row vectors and ``W``: ``[d_dot, d_v]``:

- ``sum``:   ``W_i = W_{i-1} + φ(k_i)^T v_i``
- ``delta``: ``v̄_i = φ(k_i) W_{i-1}``; ``W_i = W_{i-1} + β_i φ(k_i)^T (v_i − v̄_i)``
- read-out:  ``y_i = φ(q_i) W_i``, divided by ``φ(q_i) · z_i + ε`` with ``z_i = z_{i-1} + φ(k_i)``
  when the denominator normalisation is on.

``fast_weight_step`` writes all of it out, the denominator included (the formula tests compare with);
``reference_backend``, like every backend, returns the numerator and ``W`` only (``fwp.ops.dispatch``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fwp.ops.state import FastWeightState


def fast_weight_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    denominator: bool = False,
    eps: float = 0.0,
) -> tuple[Tensor, FastWeightState]:
    """One step of the recurrence.

    q, k: ``[B, H, d_dot]`` (feature-mapped); v: ``[B, H, d_v]``; beta: ``[B, H]`` (delta rule);
    state: ``W`` ``[B, H, d_dot, d_v]`` (and ``z`` ``[B, H, d_dot]``).
    Returns ``y``: ``[B, H, d_v]`` and the new state.
    """
    W = state.W
    if rule == "delta":
        retrieved = torch.einsum("bhd,bhdv->bhv", k, W)
        write = beta.unsqueeze(-1) * (v - retrieved)
    else:
        write = v
    W = W + k.unsqueeze(-1) * write.unsqueeze(-2)
    y = torch.einsum("bhd,bhdv->bhv", q, W)
    z = state.z
    if denominator:
        z = z + k
        y = y / ((q * z).sum(dim=-1, keepdim=True) + eps)
    return y, FastWeightState(W, z)


def reference_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    chunk_size: int,
) -> tuple[Tensor, FastWeightState]:
    """The recurrence run step by step over ``T`` (``Backend`` of ``fwp.ops.dispatch``); inputs
    ``[B, H, T, D]``, output the numerator ``φ(q_t) W_t`` ``[B, H, T, d_v]`` and the final ``W``.

    ``chunk_size`` is accepted for a uniform backend signature and unused.
    """
    del chunk_size
    outputs = []
    for t in range(q.shape[2]):
        beta_t = None if beta is None else beta[:, :, t]
        y, state = fast_weight_step(q[:, :, t], k[:, :, t], v[:, :, t], beta_t, state, rule=rule)
        outputs.append(y)
    return torch.stack(outputs, dim=2), state
