"""One entry point for every fast-weight recurrence, and the choice of backend.

Backends share one signature ``(q, k, v, beta, state, *, rule, denominator, eps, chunk_size)`` on
feature-mapped ``q, k: [B, H, T, d_dot]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T] | None`` and a
non-empty ``FastWeightState``, all in the compute dtype; they return ``y: [B, H, T, d_v]`` and the
final state. They are imported lazily so that a missing optional dependency (Triton) costs nothing
until asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from fwp.ops.state import FastWeightState
from fwp.ops.validation import check_finite_enabled, validate_recurrence_inputs

BACKENDS: dict[str, str] = {
    "reference": "fwp.ops.reference:reference_backend",
    "chunk": "fwp.ops.chunk:chunk_backend",
    "triton": "fwp.ops.triton_backend:triton_backend",
}


def load_backend(name: str) -> Callable[..., tuple[Tensor, FastWeightState]]:
    """The backend function registered under ``name`` (an imported module is looked up in
    ``sys.modules``, which ``torch.compile`` traces; it cannot trace ``importlib``)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got backend={name!r}")
    module_name, function_name = BACKENDS[name].split(":")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    return getattr(module, function_name)


def triton_usable(x: Tensor) -> bool:
    """Whether the Triton backend can run on ``x``: a CUDA tensor and an importable ``triton``."""
    if not x.is_cuda:
        return False
    return importlib.util.find_spec("triton") is not None


def require_backend_usable(name: str) -> None:
    """A ValueError naming ``backend`` when ``name`` cannot run on this machine: ``triton`` needs a CUDA
    device and the ``triton`` package (``auto`` picks it when both exist, else ``chunk``)."""
    if name != "triton":
        return
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA device")
    if importlib.util.find_spec("triton") is None:
        missing.append("the triton package")
    if missing:
        raise ValueError(
            f"backend='triton' needs {' and '.join(missing)}, not found on this machine; use "
            "backend='auto' (Triton on CUDA, else chunk) or 'chunk' / 'reference', which run on CPU"
        )


def resolve_backend(name: str, q: Tensor) -> str:
    """``auto`` → ``triton`` on CUDA when available, else ``chunk`` for ``T > 1``, else ``reference``."""
    if name != "auto":
        return name
    if triton_usable(q):
        return "triton"
    return "chunk" if q.shape[2] > 1 else "reference"


def compute_dtype(*xs: Tensor | None) -> torch.dtype:
    """The recurrence runs in float64 when any input is float64, else float32 (also under bf16/fp16)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def fast_weight_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None = None,
    *,
    rule: str = "sum",
    denominator: bool = False,
    eps: float = 1e-6,
    initial_state: FastWeightState | None = None,
    backend: str = "auto",
    chunk_size: int = 64,
    check_finite: bool | None = None,
) -> tuple[Tensor, FastWeightState]:
    """Run the fast-weight recurrence of docs/attention.md over a sequence of feature-mapped keys/queries.

    q, k: ``[B, H, T, d_dot]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (``rule='delta'`` only);
    initial_state: ``W_0`` ``[B, H, d_dot, d_v]`` (+ ``z_0`` with ``denominator``), zeros if None.
    Returns ``y``: ``[B, H, T, d_v]`` in ``v``'s dtype and the final state in the compute dtype
    (float32, or float64 for float64 inputs), with autocast off inside.
    """
    validate_recurrence_inputs(
        q,
        k,
        v,
        beta,
        initial_state,
        rule=rule,
        denominator=denominator,
        check_finite=check_finite_enabled(check_finite),
    )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got chunk_size={chunk_size}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got eps={eps}")
    dtype = compute_dtype(q, k, v, beta)
    B, H, _, d_dot = q.shape
    state = initial_state or FastWeightState.zeros(
        B, H, d_dot, v.shape[-1], denominator=denominator, dtype=dtype, device=q.device
    )
    run = load_backend(resolve_backend(backend, q))
    with torch.autocast(device_type=q.device.type, enabled=False):
        y, final_state = run(
            q.to(dtype),
            k.to(dtype),
            v.to(dtype),
            None if beta is None else beta.to(dtype),
            state.to(dtype),
            rule=rule,
            denominator=denominator,
            eps=eps,
            chunk_size=chunk_size,
        )
    return y.to(v.dtype), final_state
