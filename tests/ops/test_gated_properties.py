"""Properties of the gated rules (float64, hypothesis over shapes, chunk sizes and decays): the chunk
backend equals the gated reference; α = 1 is today's ungated rule; α → 0 forgets; β = 0 keeps the
memory, only decayed; parallel == step == carried state; invalid log-decays are refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fwp.ops import fast_weight_recurrence
from fwp.ops.gated_reference import gated_step, validate_gated_options
from fwp.ops.state import FastWeightState
from tests.ops.gated_cases import ALPHA_MIN_LOG, gated_recurrence

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
EXACT = 1e-10


def assert_close(actual: Tensor, expected: Tensor, rel: float = EXACT) -> None:
    """Agreement to ``rel`` times the largest magnitude of ``expected`` (at least 1)."""
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= rel * scale


def inputs(
    seed: int, B: int, H: int, T: int, d: int, d_v: int, *, rule: str, denominator: bool, strongest: float
) -> dict:
    """Positive keys scaled so that ``β |k|² ≤ 1`` (the delta rule's transitions are contractions),
    positive queries (a denominator ``φ(q) · z`` away from 0), any values, log-decays uniform in
    ``[strongest, 0]``, a random initial state."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    return {
        "q": rand(B, H, T, d),
        "k": rand(B, H, T, d) / d,
        "v": torch.randn(B, H, T, d_v, generator=g, dtype=torch.float64),
        "beta": rand(B, H, T) if rule == "delta" else None,
        "log_decay": strongest * rand(B, H, T),
        "state": FastWeightState(rand(B, H, d, d_v), rand(B, H, d) + 0.5 if denominator else None),
    }


def gated(backend: str, x: dict, *, denominator: bool, chunk_size: int = 4) -> tuple[Tensor, FastWeightState]:
    arguments = [x[name] for name in ("q", "k", "v", "beta", "log_decay", "state")]
    return gated_recurrence(*arguments, backend=backend, chunk_size=chunk_size, denominator=denominator)


shapes = {
    "B": st.integers(1, 2),
    "H": st.integers(1, 2),
    "T": st.integers(1, 30),
    "d": st.integers(1, 4),
    "d_v": st.integers(1, 3),
    "rule": st.sampled_from(["sum", "delta"]),
    "denominator": st.booleans(),
    "seed": st.integers(0, 2**16),
}


@PROPERTY_SETTINGS
@given(chunk_size=st.integers(1, 12), strongest=st.sampled_from([-0.1, -3.0, ALPHA_MIN_LOG]), **shapes)
def test_gated_chunk_matches_reference_for_random_shapes(
    B: int,
    H: int,
    T: int,
    d: int,
    d_v: int,
    rule: str,
    denominator: bool,
    seed: int,
    chunk_size: int,
    strongest: float,
) -> None:
    x = inputs(seed, B, H, T, d, d_v, rule=rule, denominator=denominator, strongest=strongest)
    y, final = gated("chunk", x, denominator=denominator, chunk_size=chunk_size)
    y_ref, final_ref = gated("reference", x, denominator=denominator)
    assert_close(y, y_ref)
    assert_close(final.W, final_ref.W)
    if denominator:
        assert_close(final.z, final_ref.z)


def outputs_and_gradients(run, x: dict) -> list[Tensor]:
    """``y``, the final state and the gradients of a fixed functional w.r.t. q, k, v, β and the state."""
    leaves = {
        name: x[name].clone().requires_grad_() for name in ("q", "k", "v", "beta") if x[name] is not None
    }
    state = FastWeightState(
        *(None if t is None else t.clone().requires_grad_() for t in (x["state"].W, x["state"].z))
    )
    y, final = run(*(leaves.get(name) for name in ("q", "k", "v", "beta")), state)
    results = [y, final.W] + ([final.z] if final.z is not None else [])
    loss = sum((r * torch.linspace(-1, 1, r.numel(), dtype=r.dtype).view(r.shape)).sum() for r in results)
    differentiable = list(leaves.values()) + [t for t in (state.W, state.z) if t is not None]
    return [r.detach() for r in results] + list(torch.autograd.grad(loss, differentiable))


@PROPERTY_SETTINGS
@given(backend=st.sampled_from(["reference", "chunk"]), **shapes)
def test_decay_one_is_the_ungated_rule(
    B: int, H: int, T: int, d: int, d_v: int, rule: str, denominator: bool, seed: int, backend: str
) -> None:
    """``log_decay = 0``: outputs, final state and the gradients of q, k, v, β and the initial state
    equal today's (ungated) ``fast_weight_recurrence`` on the same backend. Without the denominator the
    outputs and the final ``W`` are equal bit for bit (the gated forms multiply by decays that are exactly
    1, in the ungated order of operations); the gated denominator is the gated sum rule on the value 1
    where today's is a cumulative sum, so with it they agree to float64 rounding."""
    x = inputs(seed, B, H, T, d, d_v, rule=rule, denominator=denominator, strongest=0.0)
    options = {"denominator": denominator, "chunk_size": 4}

    def with_gate(q, k, v, beta, state):
        return gated_recurrence(q, k, v, beta, x["log_decay"], state, backend=backend, **options)

    def without(q, k, v, beta, state):
        return fast_weight_recurrence(
            q, k, v, beta, rule=rule, initial_state=state, backend=backend, **options
        )

    gated_results, ungated_results = outputs_and_gradients(with_gate, x), outputs_and_gradients(without, x)
    for actual, expected in zip(gated_results, ungated_results, strict=True):
        assert_close(actual, expected, rel=1e-12)
    if not denominator:
        assert torch.equal(gated_results[0], ungated_results[0]) and torch.equal(
            gated_results[1], ungated_results[1]
        )


@PROPERTY_SETTINGS
@given(forget_at=st.integers(0, 19), chunk_size=st.integers(1, 8), **shapes)
def test_decay_towards_zero_forgets(
    B: int,
    H: int,
    T: int,
    d: int,
    d_v: int,
    rule: str,
    denominator: bool,
    seed: int,
    forget_at: int,
    chunk_size: int,
) -> None:
    """α = 1e-6 at step ``t₀``: from ``t₀`` on, outputs and the final state are those of the same
    recurrence started at ``t₀`` from an empty memory, up to 1e-6 of the forgotten memory."""
    T = max(T, forget_at + 1)
    x = inputs(seed, B, H, T, d, d_v, rule=rule, denominator=denominator, strongest=-1.0)
    x["log_decay"][:, :, forget_at] = math.log(1e-6)
    y, final = gated("chunk", x, denominator=denominator, chunk_size=chunk_size)
    tail = {name: None if t is None else t[:, :, forget_at:] for name, t in x.items() if name != "state"}
    tail["state"] = FastWeightState(
        torch.zeros_like(x["state"].W), None if not denominator else torch.zeros_like(x["state"].z)
    )
    y_tail, final_tail = gated("reference", tail, denominator=denominator)
    if not denominator:  # with it, the output is a ratio: compared where the denominator is not tiny
        assert_close(y[:, :, forget_at:], y_tail, rel=1e-5)
    else:
        assert_close(final.z, final_tail.z, rel=1e-5)
    assert_close(final.W, final_tail.W, rel=1e-5)


@PROPERTY_SETTINGS
@given(chunk_size=st.integers(1, 8), **shapes)
def test_zero_beta_keeps_the_memory_only_decayed(
    B: int, H: int, T: int, d: int, d_v: int, rule: str, denominator: bool, seed: int, chunk_size: int
) -> None:
    """Delta rule with β = 0: ``W_t = exp(Σ_{s≤t} a_s) W_0`` and ``y_t = φ(q_t) W_t``."""
    del rule, denominator
    x = inputs(seed, B, H, T, d, d_v, rule="delta", denominator=False, strongest=-2.0)
    x["beta"] = torch.zeros_like(x["beta"])
    y, final = gated("chunk", x, denominator=False, chunk_size=chunk_size)
    decayed = x["log_decay"].cumsum(-1).exp()[..., None, None] * x["state"].W.unsqueeze(2)
    assert_close(final.W, decayed[:, :, -1])
    assert_close(y, torch.einsum("bhtd,bhtde->bhte", x["q"], decayed))


@PROPERTY_SETTINGS
@given(cut=st.integers(1, 29), chunk_size=st.integers(1, 8), **shapes)
def test_parallel_step_and_carried_state_agree(
    B: int,
    H: int,
    T: int,
    d: int,
    d_v: int,
    rule: str,
    denominator: bool,
    seed: int,
    cut: int,
    chunk_size: int,
) -> None:
    """One chunked pass over ``T`` == ``gated_step`` token by token == two chunked passes over
    ``[0, cut)`` and ``[cut, T)`` with the state carried."""
    T = max(T, cut + 1)
    x = inputs(seed, B, H, T, d, d_v, rule=rule, denominator=denominator, strongest=-3.0)
    y, final = gated("chunk", x, denominator=denominator, chunk_size=chunk_size)
    state, steps = x["state"], []
    for t in range(T):
        token = [
            None if x[name] is None else x[name][:, :, t] for name in ("q", "k", "v", "beta", "log_decay")
        ]
        y_t, state = gated_step(*token, state, denominator=denominator)
        steps.append(y_t)
    assert_close(torch.stack(steps, dim=2), y)
    assert_close(state.W, final.W)
    pieces = [
        {name: t if name == "state" or t is None else t[:, :, part] for name, t in x.items()}
        for part in (slice(0, cut), slice(cut, T))
    ]
    y_first, carried = gated("chunk", pieces[0], denominator=denominator, chunk_size=chunk_size)
    pieces[1]["state"] = carried
    y_second, carried = gated("chunk", pieces[1], denominator=denominator, chunk_size=chunk_size)
    assert_close(torch.cat([y_first, y_second], dim=2), y)
    assert_close(carried.W, final.W)
    if denominator:
        assert_close(carried.z, final.z)


@pytest.mark.parametrize("backend", ["reference", "chunk"])
@pytest.mark.parametrize(
    ("value", "shape", "match"),
    [
        (0.5, None, "finite and <= 0"),
        (float("-inf"), None, "finite and <= 0"),
        (float("nan"), None, "finite and <= 0"),
        (0.0, (1, 2, 4), r"log_decay must be \(1, 2, 5\)"),
    ],
)
def test_invalid_log_decay_is_refused(backend: str, value: float, shape: tuple | None, match: str) -> None:
    """A growing decay (α > 1), ``−inf`` (undefined differences in the chunk form), NaN and a wrong shape
    end in a ValueError naming ``log_decay``."""
    x = inputs(0, 1, 2, 5, 3, 2, rule="sum", denominator=False, strongest=-1.0)
    if shape is None:
        x["log_decay"][0, 1, 3] = value
    else:
        x["log_decay"] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        gated(backend, x, denominator=False)


@pytest.mark.parametrize("backend", ["reference", "chunk"])
def test_integer_log_decay_is_refused(backend: str) -> None:
    x = inputs(0, 1, 2, 5, 3, 2, rule="sum", denominator=False, strongest=-1.0)
    x["log_decay"] = torch.zeros(1, 2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="log_decay must be a floating-point tensor"):
        gated(backend, x, denominator=False)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "bidirectional", "denominator_write": False}, "no bidirectional form"),
        ({"mode": "causal", "denominator_write": True}, "cannot be combined with denominator_write"),
    ],
)
def test_options_without_a_gated_form_are_refused(options: dict, match: str) -> None:
    """The check the entry point runs when a log_decay is given: the bidirectional mode and
    ``denominator_write`` have no gated form and are refused with the reason."""
    with pytest.raises(ValueError, match=match):
        validate_gated_options(**options)
