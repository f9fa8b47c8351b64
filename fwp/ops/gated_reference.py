"""The gated sum and delta rules, step by step: the oracle of the gated chunk backend.

Per batch row and head, with row vectors, ``W``: ``[d_dot, d_v]`` and a decay ``α_t = exp(a_t)``
given in log space (``a_t`` = ``log_decay[..., t]`` ≤ 0, so ``α_t ∈ (0, 1]``):

- gated sum rule:   ``W_t = α_t W_{t−1} + φ(k_t)ᵀ v_t``
- gated delta rule: ``W_t = α_t W_{t−1} + β_t φ(k_t)ᵀ (v_t − φ(k_t) α_t W_{t−1})``
- read-out: ``y_t = φ(q_t) W_t``, divided by ``φ(q_t) · z_t + ε`` with ``z_t = α_t z_{t−1} + φ(k_t)``
  when the denominator normalisation is on.

A step is the ungated step (``fwp.ops.reference.fast_weight_step``) on the decayed memory
``(α_t W_{t−1}, α_t z_{t−1})``, so ``log_decay = 0`` gives today's rules bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fwp.ops.reference import fast_weight_step
from fwp.ops.state import FastWeightState
from fwp.ops.validation import require_float


def validate_log_decay(log_decay: Tensor, q: Tensor) -> None:
    """A ValueError unless ``log_decay`` has ``q``'s shape without its last dimension (``[B, H, T]`` for
    a sequence, ``[B, H]`` for a step), is floating point, and every value is finite and ``≤ 0``: a
    decay ``α > 1`` would grow the memory without bound, and ``−inf`` (``α = 0`` exactly) makes the
    chunk backend's differences of cumulative log-decays ``−inf − (−inf)`` undefined (a very negative
    finite value such as ``−30`` forgets as well). Inside ``torch.compile`` the value check is an
    assertion in the graph (a RuntimeError)."""
    if tuple(log_decay.shape) != tuple(q.shape[:-1]):
        raise ValueError(
            f"log_decay must be {tuple(q.shape[:-1])} ([B, H, T]), got shape {tuple(log_decay.shape)}"
        )
    require_float("log_decay", log_decay)
    allowed = (log_decay <= 0) & (log_decay > float("-inf"))
    message = "log_decay must be finite and <= 0 (the decay exp(log_decay) in (0, 1])"
    if torch.compiler.is_compiling():
        torch._assert_async(allowed.all(), message)
        return
    if not allowed.all():
        bad = log_decay[~allowed]
        raise ValueError(f"{message}, got {bad.numel()} other values, e.g. {bad[0].item()}")


def gated_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor,
    state: FastWeightState,
    *,
    denominator: bool = False,
    eps: float = 1e-6,
) -> tuple[Tensor, FastWeightState]:
    """One step of a gated rule (the delta rule when ``beta`` is given, else the sum rule).

    q, k: ``[B, H, d_dot]`` (feature-mapped); v: ``[B, H, d_v]``; beta: ``[B, H]`` or None;
    log_decay: ``[B, H]``; state: ``W`` ``[B, H, d_dot, d_v]`` (and ``z`` ``[B, H, d_dot]``).
    Returns ``y``: ``[B, H, d_v]`` and the new state.
    """
    alpha = log_decay.exp()
    z = None if state.z is None else alpha.unsqueeze(-1) * state.z
    decayed = FastWeightState(alpha[..., None, None] * state.W, z)
    rule = "sum" if beta is None else "delta"
    return fast_weight_step(q, k, v, beta, decayed, rule=rule, denominator=denominator, eps=eps)


def gated_reference_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor,
    state: FastWeightState,
    *,
    chunk_size: int = 64,
) -> tuple[Tensor, FastWeightState]:
    """``gated_step`` run over ``T``: q, k ``[B, H, T, d_dot]``, v ``[B, H, T, d_v]``, beta and
    log_decay ``[B, H, T]`` (beta None: the sum rule), state ``W_0`` ``[B, H, d_dot, d_v]`` → the
    read-out numerator ``φ(q_t) W_t`` ``[B, H, T, d_v]`` and the final ``W`` (normalisations are the
    entry point's, as for the ungated backends of ``fwp.ops.dispatch``; the gated denominator is
    ``fwp.ops.gated_chunk.gated_causal_denominator``).

    ``chunk_size`` is accepted for the signature the gated chunk backend shares, and unused.
    """
    del chunk_size
    validate_log_decay(log_decay, q)
    outputs, state = [], FastWeightState(state.W)
    for t in range(q.shape[2]):
        beta_t = None if beta is None else beta[:, :, t]
        y, state = gated_step(q[:, :, t], k[:, :, t], v[:, :, t], beta_t, log_decay[:, :, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=2), state


def validate_gated_options(*, mode: str, denominator_write: bool) -> None:
    """A ValueError for the options of a fast-weight layer that have no gated form: the bidirectional
    mode (a decay orders the writes: ``α_t`` shrinks only what was written before ``t``, so there is no
    order-free memory every query could read) and ``denominator_write`` (its write scale
    ``s_t = z_{t−1} · φ(k_t)`` has no published gated counterpart; whether ``s_t`` should see ``z_{t−1}``
    or the decayed ``α_t z_{t−1}`` is a modelling choice this framework does not make silently)."""
    if mode == "bidirectional":
        raise ValueError(
            "log_decay orders the writes (the decay shrinks only what was written before), so it has no "
            "bidirectional form; use mode='causal' (causal=True), got mode='bidirectional'"
        )
    if denominator_write:
        raise ValueError(
            "log_decay cannot be combined with denominator_write: the write scale z_{t-1}·φ(k_t) has no "
            "defined gated form; use the denominator alone (z_t = α_t z_{t-1} + φ(k_t))"
        )
