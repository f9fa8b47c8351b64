"""What the ops tests share: feature maps and normalisations under test, random problems whose leaves
are the raw (pre-feature-map) inputs, and a runner returning outputs, final state and all gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from fwp.ops import (
    FastWeightState,
    dpfp,
    elu_plus_one,
    fast_weight_recurrence,
    favor,
    identity,
    orthogonal_random_projection,
    sum_normalize,
)

D_K, FAVOR_M = 3, 4
FAVOR_OMEGA = orthogonal_random_projection(
    FAVOR_M, D_K, generator=torch.Generator().manual_seed(1234), dtype=torch.float64
)
FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": identity,
    "elu": elu_plus_one,
    "dpfp1": partial(dpfp, nu=1),
    "dpfp2": partial(dpfp, nu=2),
    "dpfp3": partial(dpfp, nu=3),
    "favor": partial(favor, omega=FAVOR_OMEGA),
}
NORMALISATIONS = ("sum", "denominator", "none")
RULES = ("sum", "delta")
SUM_NORM_EPS = 1e-6


@dataclass
class Problem:
    """Leaves of one recurrence: raw q, k ``[B, H, T, d_k]``, v ``[B, H, T, d_v]``, beta ``[B, H, T]``
    (delta rule), initial ``W_0`` and ``z_0`` (denominator), and the feature map / normalisation."""

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor | None
    W0: Tensor
    z0: Tensor | None
    feature_map: str
    normalisation: str
    rule: str

    @property
    def leaves(self) -> dict[str, Tensor]:
        named = {"q": self.q, "k": self.k, "v": self.v, "beta": self.beta, "W0": self.W0, "z0": self.z0}
        return {name: x for name, x in named.items() if x is not None}


def feature_dim_of(feature_map: str, d_k: int) -> int:
    """``d_dot`` of a map of ``FEATURE_MAPS`` for keys of size ``d_k``."""
    return FEATURE_MAPS[feature_map](torch.zeros(1, d_k, dtype=torch.float64)).shape[-1]


def make_problem(
    *,
    rule: str,
    feature_map: str = "dpfp1",
    normalisation: str = "sum",
    B: int = 1,
    H: int = 2,
    T: int = 7,
    d_k: int = D_K,
    d_v: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Problem:
    """A random problem with a random initial state; every leaf requires grad."""
    g = torch.Generator().manual_seed(seed)
    d_dot = feature_dim_of(feature_map, d_k)

    def leaf(*shape: int, scale: float = 1.0, positive: bool = False) -> Tensor:
        x = (
            torch.rand(*shape, generator=g, dtype=dtype)
            if positive
            else torch.randn(*shape, generator=g, dtype=dtype)
        )
        return (scale * x).requires_grad_()

    denominator = normalisation == "denominator"
    return Problem(
        q=leaf(B, H, T, d_k, scale=0.5),
        k=leaf(B, H, T, d_k, scale=0.5),
        v=leaf(B, H, T, d_v),
        beta=leaf(B, H, T, positive=True) if rule == "delta" else None,
        W0=leaf(B, H, d_dot, d_v, scale=0.3),
        z0=leaf(B, H, d_dot, positive=True) if denominator else None,
        feature_map=feature_map,
        normalisation=normalisation,
        rule=rule,
    )


def features(problem: Problem) -> tuple[Tensor, Tensor]:
    """``φ(q), φ(k)`` of ``problem``, sum-normalised if its normalisation is ``sum``."""
    phi = FEATURE_MAPS[problem.feature_map]
    q, k = phi(problem.q), phi(problem.k)
    if problem.normalisation == "sum":
        q, k = sum_normalize(q, SUM_NORM_EPS), sum_normalize(k, SUM_NORM_EPS)
    return q, k


def run(problem: Problem, *, backend: str, chunk_size: int = 4) -> tuple[Tensor, FastWeightState]:
    """Feature map, normalisation and recurrence of ``problem`` through ``fast_weight_recurrence``."""
    q, k = features(problem)
    return fast_weight_recurrence(
        q,
        k,
        problem.v,
        problem.beta,
        rule=problem.rule,
        denominator=problem.normalisation == "denominator",
        initial_state=FastWeightState(problem.W0, problem.z0),
        backend=backend,
        chunk_size=chunk_size,
    )


def outputs_and_gradients(problem: Problem, *, backend: str, chunk_size: int = 4) -> dict[str, Tensor]:
    """``y``, final ``W`` (and ``z``) and the gradients of a fixed random functional of all three
    w.r.t. every leaf, keyed ``y``, ``W``, ``z``, ``grad_q``, ``grad_k``, ...."""
    y, state = run(problem, backend=backend, chunk_size=chunk_size)
    results = {"y": y, "W": state.W} | ({"z": state.z} if state.z is not None else {})
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype) for x in results.values()]
    loss = sum((x * w).sum() for x, w in zip(results.values(), weights, strict=True))
    leaves = problem.leaves
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {name: x.detach() for name, x in results.items()} | {
        f"grad_{name}": grad for name, grad in zip(leaves, grads, strict=True)
    }


def assert_all_close(actual: dict[str, Tensor], expected: dict[str, Tensor], *, rel: float) -> None:
    """Every entry agrees to ``rel`` times the entry's largest magnitude (at least 1)."""
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        scale = max(1.0, want.abs().max().item())
        error = (actual[name] - want).abs().max().item()
        assert error <= rel * scale, f"{name}: max error {error:.3e} > {rel:.0e} × scale {scale:.3e}"
