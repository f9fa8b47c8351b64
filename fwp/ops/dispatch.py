"""The backends of the causal recurrence, and the choice among them.

A backend computes, for feature-mapped ``q, k: [B, H, T, d_dot]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]
| None`` and an initial memory ``state.W: [B, H, d_dot, d_v]`` (all in the compute dtype, autocast off),
the read-out numerator ``y_t = φ(q_t) W_t`` ``[B, H, T, d_v]`` and the final ``W`` (``z`` stays None:
normalisations are ``fwp.ops.fast_weight_attention``'s). ``Backend`` is that signature. Backends are
imported lazily so that a missing optional dependency (Triton) costs nothing until asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from typing import Protocol

import torch
from torch import Tensor

from fwp.ops.state import FastWeightState


class Backend(Protocol):
    """What ``reference``, ``chunk`` and ``triton`` implement (module docstring)."""

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor | None,
        state: FastWeightState,
        *,
        rule: str,
        chunk_size: int,
    ) -> tuple[Tensor, FastWeightState]: ...


BACKENDS: dict[str, str] = {
    "reference": "fwp.ops.reference:reference_backend",
    "step": "fwp.ops.step:step_backend",
    "chunk": "fwp.ops.chunk:chunk_backend",
    "triton": "fwp.ops.triton_backend:triton_backend",
}


GATED_BACKENDS: dict[str, str] = {
    "reference": "fwp.ops.gated_reference:gated_reference_backend",
    "step": "fwp.ops.gated_reference:gated_reference_backend",
    "chunk": "fwp.ops.gated_chunk:gated_chunk_backend",
}
"""The backends of the gated rules (``log_decay`` given), called as ``run(q, k, v, beta, log_decay,
state, chunk_size=...)`` (the delta rule when ``beta`` is given, else the sum rule). One token steps
through the gated oracle; there is no gated Triton kernel."""

_warned_no_gated_triton = False


def load_backend(name: str, *, gated: bool = False) -> Backend:
    """The backend function registered under ``name`` (``GATED_BACKENDS`` when ``gated``; an imported
    module is looked up in ``sys.modules``, which ``torch.compile`` traces; it cannot trace
    ``importlib``)."""
    table = GATED_BACKENDS if gated else BACKENDS
    if name not in table:
        raise ValueError(f"backend must be one of {['auto', *table]}, got backend={name!r}")
    module_name, function_name = table[name].split(":")
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
    """``auto`` → ``triton`` on CUDA when available, else ``chunk`` for ``T > 1``, else ``step``."""
    if name != "auto":
        return name
    if triton_usable(q):
        return "triton"
    return "chunk" if q.shape[2] > 1 else "step"


def resolve_gated_backend(name: str, q: Tensor) -> str:
    """The backend of a gated recurrence: ``auto`` → ``chunk`` for ``T > 1``, else ``step``; on CUDA,
    where ``auto`` would pick Triton for the ungated rules, a warning (once) says that it uses
    ``chunk``. ``triton`` is refused: it has no gated kernel."""
    global _warned_no_gated_triton
    require_gated_backend(name)
    if name != "auto":
        return name
    if triton_usable(q) and not _warned_no_gated_triton:
        _warned_no_gated_triton = True
        warnings.warn(
            "backend='auto' with log_decay uses the chunk backend on CUDA: there is no Triton kernel "
            "for the gated rules",
            stacklevel=3,
        )
    return "chunk" if q.shape[2] > 1 else "step"


def require_gated_backend(name: str) -> None:
    """A ValueError naming ``backend`` when ``name`` has no gated form (``triton``)."""
    if name == "triton":
        raise ValueError(
            "backend='triton' has no kernel for the gated rules (log_decay / a decay); use "
            "backend='auto' or 'chunk' (the chunk backend runs them on any device) or 'reference'"
        )


def compute_dtype(*xs: Tensor | None) -> torch.dtype:
    """The recurrence runs in float64 when any input is float64, else float32 (also under bf16/fp16)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32
