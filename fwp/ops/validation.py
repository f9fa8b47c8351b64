"""Argument checks of the fast-weight ops: clear ``ValueError``s naming the argument and the shapes seen."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from fwp.ops.rules import RULES, get_rule
from fwp.ops.state import FastWeightState


def check_finite_enabled(flag: bool | None) -> bool:
    """``flag`` if given, else whether the debug environment variable ``FWP_DEBUG=1`` is set."""
    return flag if flag is not None else os.environ.get("FWP_DEBUG", "") == "1"


def require_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    """A ValueError naming ``option`` and the allowed values unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {option}={value!r}")


def require_at_least(option: str, value: float, minimum: float) -> None:
    """A ValueError naming ``option`` unless ``value >= minimum``."""
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {option}={value}")


def require_float(name: str, x: Tensor) -> None:
    """A ValueError naming ``name`` unless ``x`` holds floating-point numbers."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _require_finite(name: str, x: Tensor) -> None:
    """A ValueError counting the non-finite values of ``x``; inside ``torch.compile`` (where a branch on
    a tensor's values would break the graph) a RuntimeError from an assertion in the graph, uncounted."""
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(x).all(), f"{name} has non-finite values (shape {tuple(x.shape)})")
        return
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} has {bad} non-finite values (shape {tuple(x.shape)})")


def validate_recurrence_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    state: FastWeightState | None,
    *,
    rule: str,
    denominator: bool,
    check_finite: bool,
) -> None:
    """Check the shapes ``q, k: [B, H, T, d_dot]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]`` (rules
    that use β only), ``state.W: [B, H, d_dot, d_v]``, ``state.z: [B, H, d_dot]`` (denominator only),
    one device, and (``check_finite``) finite values. That the inputs are floating-point is checked
    before they are cast to the compute dtype (``require_float``)."""
    uses_beta = get_rule(rule).uses_beta
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, H, T, D], got shape {tuple(x.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must share [B, H, T] with q, got v {tuple(v.shape)} and q {tuple(q.shape)}")
    B, H, T, d_dot = q.shape
    d_v = v.shape[-1]
    if T < 1:
        raise ValueError(f"q, k, v must hold at least one time step, got T={T} (q shape {tuple(q.shape)})")
    if uses_beta:
        if beta is None:
            raise ValueError(f"beta is required by rule={rule!r} (shape [B, H, T]), got None")
        if tuple(beta.shape) != (B, H, T):
            raise ValueError(f"beta must be [B, H, T] = {(B, H, T)}, got shape {tuple(beta.shape)}")
    elif beta is not None:
        users = [name for name, entry in RULES.items() if entry.uses_beta]
        raise ValueError(
            f"beta is only used by rule={' or '.join(map(repr, users))}, got beta with rule={rule!r}"
        )
    if state is not None:
        validate_state(state, B, H, d_dot, d_v, denominator=denominator)
    named = {"q": q, "k": k, "v": v, "beta": beta}
    if state is not None:
        named |= {"state.W": state.W, "state.z": state.z}
    named = {name: x for name, x in named.items() if x is not None}
    devices = {x.device for x in named.values()}
    if len(devices) > 1:
        seen = ", ".join(f"{name} on {x.device}" for name, x in named.items())
        raise ValueError(f"q, k, v, beta and the state must be on one device, got {seen}")
    if check_finite:
        for name, x in named.items():
            _require_finite(name, x)


def validate_state(
    state: FastWeightState, B: int, H: int, d_dot: int, d_v: int, *, denominator: bool
) -> None:
    """``state.W: [B, H, d_dot, d_v]`` and ``state.z: [B, H, d_dot]`` if and only if the layer uses the
    denominator normalisation (a state of another layer fails here, not deep inside a product)."""
    if tuple(state.W.shape) != (B, H, d_dot, d_v):
        raise ValueError(
            f"state.W must be [B, H, d_dot, d_v] = {(B, H, d_dot, d_v)}, got {tuple(state.W.shape)}"
        )
    if denominator and (state.z is None or tuple(state.z.shape) != (B, H, d_dot)):
        seen = None if state.z is None else tuple(state.z.shape)
        raise ValueError(f"state.z must be [B, H, d_dot] = {(B, H, d_dot)} with a denominator, got {seen}")
    if not denominator and state.z is not None:
        raise ValueError("state.z is given but denominator=False: the state belongs to another layer")
