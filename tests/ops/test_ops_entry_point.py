"""``fwp.ops``' vocabulary and its one entry point: the feature-map, rule and normalisation tables, the
backend protocol (numerator and ``W`` only) and ``fast_weight_attention`` in its three modes (float64)."""

from __future__ import annotations

import pytest
import torch

from fwp.ops import (
    BACKENDS,
    FEATURE_MAPS,
    NORMALIZATIONS,
    RULES,
    FastWeightState,
    Normalization,
    build_feature_map,
    dpfp,
    elu_plus_one,
    fast_weight_attention,
    fast_weight_recurrence,
    favor,
    identity,
    l2_normalize,
    load_backend,
    sum_normalize,
)

B, H, T, S, D, D_V = 2, 3, 6, 5, 4, 3


def rand(*shape: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    return x if positive else 2 * x - 1


def test_every_feature_map_module_is_its_function_with_its_d_dot() -> None:
    """The modules of ``FEATURE_MAPS`` compute the formulas of the tensor functions (pinned by
    tests/ops/test_feature_map_values.py) and report the size they output."""
    x = rand(B, H, T, D)
    maps = {name: build_feature_map(name, D).double() for name in FEATURE_MAPS}
    expected = {
        "identity": identity(x),
        "elu": elu_plus_one(x),
        "dpfp": dpfp(x, 1),
        "favor": favor(x, maps["favor"].omega),
        "tanh": torch.tanh(x),
        "l2": l2_normalize(x),
        "silu_l2": l2_normalize(torch.nn.functional.silu(x)),
    }
    assert set(expected) == set(FEATURE_MAPS)
    for name, phi in maps.items():
        torch.testing.assert_close(phi(x), expected[name], rtol=0, atol=0)
        assert phi(x).shape[-1] == phi.d_dot, name
    favor3 = build_feature_map("favor", D, m=3, feature_eps=1e-4).double()
    torch.testing.assert_close(favor3(x), favor(x, favor3.omega, 1e-4), rtol=0, atol=0)
    assert build_feature_map("dpfp", D, nu=3).d_dot == 2 * D * 3 == dpfp(x, 3).shape[-1]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("relu", {}, r"feature_map must be one of \[.*'favor'.*\], got feature_map='relu'"),
        ("elu", {"nu": 2}, r"feature_map 'elu' takes the options \[\], got \['nu'\]"),
        ("dpfp", {"nu": 0}, r"nu must be >= 1, got nu=0"),
        ("favor", {"redraw": "sometimes"}, r"redraw must be one of .*got redraw='sometimes'"),
        ("favor", {"omega_draw": "gaussian"}, r"omega_draw must be one of .*'gaussian'"),
    ],
)
def test_feature_map_options_are_checked_by_name(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_feature_map(name, D, **options)


def test_the_rule_and_normalisation_tables() -> None:
    assert {name: (rule.uses_beta, rule.order_free) for name, rule in RULES.items()} == {
        "sum": (False, True),
        "delta": (True, False),
    }
    assert set(NORMALIZATIONS) == {"sum", "denominator"}
    both = Normalization.from_options(["sum", "denominator"], eps=1e-5, sum_eps=0.0)
    assert (both.sum, both.denominator, both.eps, both.sum_eps, both.names) == (
        True,
        True,
        1e-5,
        0.0,
        ["sum", "denominator"],
    )
    with pytest.raises(ValueError, match="denominator_write=True needs the denominator"):
        Normalization(denominator_write=True)


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"triton"}))
@pytest.mark.parametrize("rule", sorted(RULES))
def test_backends_return_the_numerator_and_the_memory_only(backend: str, rule: str) -> None:
    """The ``Backend`` protocol: ``y_t = q_t W_t`` without any normalisation and the final ``W``; the
    denominator belongs to the entry point (before, every backend applied it itself)."""
    q, k, v, W0 = (
        rand(B, H, T, D, seed=1),
        rand(B, H, T, D, seed=2),
        rand(B, H, T, D_V, seed=3),
        rand(B, H, D, D_V),
    )
    beta = rand(B, H, T, seed=4, positive=True) if rule == "delta" else None
    y, state = load_backend(backend)(q, k, v, beta, FastWeightState(W0), rule=rule, chunk_size=4)
    expected_y, expected_state = fast_weight_recurrence(
        q, k, v, beta, rule=rule, initial_state=FastWeightState(W0), backend="reference"
    )
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.W, expected_state.W, rtol=1e-12, atol=1e-12)
    assert state.z is None
    if rule == "sum":
        torch.testing.assert_close(
            y, torch.tril(q @ k.transpose(-1, -2)) @ v + q @ W0, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("normalization", [[], ["sum"], ["denominator"], ["sum", "denominator"]])
def test_the_three_modes_against_written_formulas(normalization: list[str]) -> None:
    """Causal: ``y_t = φ(q_t) Σ_{j≤t} φ(k_j)ᵀ v_j`` (÷ ``φ(q_t)·Σ_{j≤t} φ(k_j) + ε``); bidirectional: the
    same over all ``j`` plus a carried memory; read: the memory only. φ = elu + 1, sum-normalised when
    asked; one padded key in row 0 writes nothing."""
    spec = Normalization.from_options(normalization, eps=0.1 if "denominator" in normalization else None)
    phi = build_feature_map("elu", D)
    q, k, v = rand(B, H, T, D, seed=5), rand(B, H, S, D, seed=6), rand(B, H, S, D_V, seed=7)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, 1] = True

    def features(x: torch.Tensor) -> torch.Tensor:
        return sum_normalize(elu_plus_one(x), spec.sum_eps) if spec.sum else elu_plus_one(x)

    fq, fk = features(q), features(k) * (~mask)[:, None, :, None]
    scores = fq @ fk.transpose(-1, -2)

    def normalised(y: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return y / (den.unsqueeze(-1) + spec.eps) if spec.denominator else y

    y, memory = fast_weight_attention(
        q, k, v, feature_map=phi, normalization=spec, mode="bidirectional", key_padding_mask=mask
    )
    torch.testing.assert_close(y, normalised(scores @ v, scores.sum(-1)), rtol=1e-12, atol=1e-12)
    read = fast_weight_attention(q, feature_map=phi, normalization=spec, mode="read", state=memory)[0]
    torch.testing.assert_close(read, y, rtol=1e-12, atol=1e-12)
    twice, _ = fast_weight_attention(
        q,
        k,
        v,
        feature_map=phi,
        normalization=spec,
        mode="bidirectional",
        state=memory,
        key_padding_mask=mask,
    )
    torch.testing.assert_close(twice, normalised(2 * scores @ v, 2 * scores.sum(-1)), rtol=1e-12, atol=1e-12)
    causal, state = fast_weight_attention(
        q[:, :, :S], k, v, feature_map=phi, normalization=spec, key_padding_mask=mask
    )
    lower = torch.tril(scores[:, :, :S])
    torch.testing.assert_close(causal, normalised(lower @ v, lower.sum(-1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.W, memory.W, rtol=1e-12, atol=1e-12)
    assert (state.z is None) == (memory.z is None) == (not spec.denominator)


Q = rand(B, H, T, D)
REFUSED = {
    "read with k": (
        {"k": Q, "mode": "read", "state": FastWeightState(rand(B, H, D, D))},
        r"mode='read' reads the memory of a state without writing: give q and state only",
    ),
    "read without state": ({"mode": "read"}, r"mode='read' reads the memory of a state"),
    "delta bidirectional": (
        {"k": Q, "v": Q, "mode": "bidirectional", "rule": "delta", "beta": rand(B, H, T, positive=True)},
        r"needs a rule whose memory does not depend on the order of the writes \(sum\), got rule='delta'",
    ),
    "beta with the sum rule": (
        {"k": Q, "v": Q, "mode": "bidirectional", "beta": rand(B, H, T, positive=True)},
        r"beta is not used by rule='sum'",
    ),
    "unknown mode": (
        {"k": Q, "v": Q, "mode": "sideways"},
        r"mode must be one of \['causal', 'bidirectional'",
    ),
    "write without v": ({"k": Q}, r"mode='causal' writes k and v into the memory"),
}


@pytest.mark.parametrize(("arguments", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_a_call_that_does_not_fit_its_mode_is_refused_by_name(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fast_weight_attention(Q, **arguments)
