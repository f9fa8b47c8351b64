"""What the gated-rule tests share: problems of ``tests/ops/ops_cases.py`` with a log-decay leaf, and a
runner of the gated backends returning outputs, final state and the gradients of every leaf."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fwp.ops.gated_chunk import gated_causal_denominator, gated_chunk_backend
from fwp.ops.gated_reference import gated_reference_backend
from fwp.ops.state import FastWeightState
from tests.ops.ops_cases import Problem, features, make_problem

GATED_BACKENDS = {"reference": gated_reference_backend, "chunk": gated_chunk_backend}
ALPHA_MIN_LOG = -13.815510557964274  # log(1e-6): the strongest decay the tests ask for


@dataclass
class GatedProblem:
    """An ungated problem (raw q, k, v, β, W_0, z_0, feature map, normalisation) and log-decays
    ``[B, H, T]`` (a leaf requiring grad)."""

    base: Problem
    log_decay: Tensor

    @property
    def leaves(self) -> dict[str, Tensor]:
        return self.base.leaves | {"log_decay": self.log_decay}


def make_gated_problem(*, rule: str, strongest: float = -2.0, seed: int = 0, **options) -> GatedProblem:
    """``make_problem(rule, seed, **options)`` with log-decays uniform in ``[strongest, 0]``."""
    base = make_problem(rule=rule, seed=seed, **options)
    g = torch.Generator().manual_seed(seed + 1000)
    log_decay = strongest * torch.rand(base.v.shape[:3], generator=g, dtype=base.v.dtype)
    return GatedProblem(base, log_decay.requires_grad_())


def gated_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor | None,
    log_decay: Tensor,
    state: FastWeightState,
    *,
    backend: str,
    denominator: bool,
    eps: float = 1e-6,
    chunk_size: int = 4,
) -> tuple[Tensor, FastWeightState]:
    """A gated layer's read-out and memory as the entry point (``fwp.ops.fast_weight_attention``) forms
    them from a backend: the numerator and ``W`` from the backend, divided by the gated denominator
    (on the same backend) when it is on."""
    run = GATED_BACKENDS[backend]
    numerator, written = run(q, k, v, beta, log_decay, FastWeightState(state.W), chunk_size=chunk_size)
    if not denominator:
        return numerator, written
    den, z = gated_causal_denominator(q, k, log_decay, state.z, backend=run, chunk_size=chunk_size)
    return numerator / (den.unsqueeze(-1) + eps), FastWeightState(written.W, z)


def run_gated(problem: GatedProblem, *, backend: str, chunk_size: int = 4) -> tuple[Tensor, FastWeightState]:
    """Feature map, normalisation and the gated recurrence of ``problem`` on one gated backend."""
    base = problem.base
    q, k = features(base)
    state = FastWeightState(base.W0, base.z0)
    return gated_recurrence(
        q,
        k,
        base.v,
        base.beta,
        problem.log_decay,
        state,
        backend=backend,
        denominator=base.normalisation == "denominator",
        chunk_size=chunk_size,
    )


def gated_outputs_and_gradients(
    problem: GatedProblem,
    *,
    backend: str = "reference",
    chunk_size: int = 4,
    runner: Callable[[GatedProblem], tuple[Tensor, FastWeightState]] | None = None,
) -> dict[str, Tensor]:
    """``y``, the final ``W`` (and ``z``) and the gradients of one fixed random functional of them
    w.r.t. every leaf (raw q, k, v, β, W_0, z_0 and log_decay), keyed ``y``, ``W``, ``z``, ``grad_q``, ….
    ``runner`` computes ``y`` and the state (default: ``run_gated`` on ``backend``)."""
    if runner is None:
        y, state = run_gated(problem, backend=backend, chunk_size=chunk_size)
    else:
        y, state = runner(problem)
    results = {"y": y, "W": state.W} | ({"z": state.z} if state.z is not None else {})
    g = torch.Generator().manual_seed(99)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype) for x in results.values()]
    loss = sum((x * w).sum() for x, w in zip(results.values(), weights, strict=True))
    grads = torch.autograd.grad(loss, list(problem.leaves.values()))
    named_grads = {f"grad_{name}": grad for name, grad in zip(problem.leaves, grads, strict=True)}
    return {name: x.detach() for name, x in results.items()} | named_grads
