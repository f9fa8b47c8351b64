"""The chunk backend's forward algorithm differentiated by plain autograd: the benchmark's twin.

Same maths, same batching and the same per-chunk operators (``fwp.ops.chunk_math``) as
``fwp.ops.chunk``, but without the hand-written ``torch.autograd.Function``: autograd records every
operation (including the triangular solve and each step of the state scan) and replays it backwards.
Used only by ``bench/ops.py`` to measure what the hand-written backward buys.
"""

from __future__ import annotations

from torch import Tensor

from fwp.ops.chunk_math import (
    causal_scores,
    chunk_read,
    delta_rule_scan,
    merge_chunks,
    split_beta_chunks,
    split_chunks,
    sum_rule_states,
    wy_inverse,
)


def plain_chunk_recurrence(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None, initial: Tensor, *, rule: str, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """q, k: ``[B, H, T, d]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (delta rule) or None;
    initial: ``W_0`` ``[B, H, d, d_v]``. Returns ``y`` ``[B, H, T, d_v]`` and the final ``W``."""
    B, H, T, d = q.shape
    size = min(chunk_size, T)
    q_c, k_c, v_c = split_chunks(q, size), split_chunks(k, size), split_chunks(v, size)
    start = initial.reshape(B * H, d, v.shape[-1])
    if rule == "delta":
        beta_c = split_beta_chunks(beta, size)
        inverse = wy_inverse(beta_c.unsqueeze(-1) * k_c, k_c)
        values, starts, final = delta_rule_scan(k_c, v_c, beta_c, inverse, start)
    else:
        values, (starts, final) = v_c, sum_rule_states(k_c, v_c, start)
    out = chunk_read(q_c, causal_scores(q_c, k_c), values, starts)
    return merge_chunks(out, B, H, T), final.view_as(initial)
