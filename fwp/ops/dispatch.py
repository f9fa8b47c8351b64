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


def load_backend(name: str) -> Backend:
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
    """``auto`` → ``triton`` on CUDA when available, else ``chunk`` for ``T > 1``, else ``step``."""
    if name != "auto":
        return name
    if triton_usable(q):
        return "triton"
    return "chunk" if q.shape[2] > 1 else "step"


def compute_dtype(*xs: Tensor | None) -> torch.dtype:
    """The recurrence runs in float64 when any input is float64, else float32 (also under bf16/fp16)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32
