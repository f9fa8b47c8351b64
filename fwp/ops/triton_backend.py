"""The ``triton`` backend of ``fwp.ops``: the chunkwise sum and delta rules as fused Triton kernels.

Feature maps are applied before the kernels (q and k arrive feature-mapped); the Katharopoulos
denominator is ``fwp.ops.fast_weight_attention``'s. Importing this module never imports Triton: a
missing Triton, or tensors on a device Triton cannot run on, fail with a clear error when the backend
is called.
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

from fwp.ops.state import FastWeightState
from fwp.ops.triton_tiles import Tiles

INTERPRETER_VARIABLE = "TRITON_INTERPRET"


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get(INTERPRETER_VARIABLE, "") == "1"


def check_triton_runnable(x: Tensor) -> None:
    """Raise unless Triton is installed and ``x`` is on CUDA (or the interpreter is on)."""
    if not x.is_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got tensors on device {x.device}; use backend='chunk' "
            f"or 'auto', or set {INTERPRETER_VARIABLE}=1 before importing triton to run the kernels in "
            "Triton's CPU interpreter"
        )
    if importlib.util.find_spec("triton") is None:
        raise ImportError("backend='triton' needs the optional dependency triton: pip install 'fwp[triton]'")


def triton_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState,
    *,
    rule: str,
    chunk_size: int,
    tiles: Tiles | None = None,
) -> tuple[Tensor, FastWeightState]:
    """The chunkwise recurrence of ``fwp.ops.reference`` on Triton kernels, differentiable in every input.

    q, k: ``[B, H, T, d_dot]`` (feature-mapped); v: ``[B, H, T, d_v]``; beta: ``[B, H, T]``
    (``rule='delta'``) or None; state: ``W`` ``[B, H, d_dot, d_v]``. Inputs may be float32, float64,
    bfloat16 or float16; the state and every accumulation are float32 (float64 for float64 inputs).
    ``chunk_size`` is rounded up to a power of two in ``[16, 64]``; ``tiles`` overrides the tile sizes.
    Returns the numerator ``y_t = q_t W_t``: ``[B, H, T, d_v]`` in ``v``'s dtype and the final ``W``.
    """
    if rule not in ("sum", "delta"):
        raise ValueError(f"rule must be 'sum' or 'delta', got rule={rule!r}")
    B, H, T, d_dot = q.shape
    d_v = v.shape[-1]
    if T == 0:
        raise ValueError(f"the triton backend needs a sequence of at least one step, got T={T}")
    check_triton_runnable(q)
    from fwp.ops.triton_chunkwise import ChunkwiseFastWeight

    tiles = tiles or Tiles.for_shapes(d_dot, d_v, chunk_size)
    y, W = ChunkwiseFastWeight.apply(
        q.reshape(B * H, T, d_dot).contiguous(),
        k.reshape(B * H, T, d_dot).contiguous(),
        v.reshape(B * H, T, d_v).contiguous(),
        None if rule == "sum" else beta.reshape(B * H, T).contiguous(),
        state.W.reshape(B * H, d_dot, d_v),
        tiles,
    )
    return y.reshape(B, H, T, d_v).to(v.dtype), FastWeightState(W.reshape(B, H, d_dot, d_v))
