"""Feature maps and normalisations (``fwp.ops``) pinned by their written formulas.

Every other ops test compares two of the project's own paths (chunk against reference, step against
sequence) that call the same ``fwp.ops`` feature maps on both sides, so a wrong formula there passes them
all. Here the values come from the formulas of ``docs/design.md`` §1: small inputs whose results are
worked out by hand in the comments, and a float64 comparison with the plain-Python implementations
below, which share no code with ``fwp.ops``.
"""

from __future__ import annotations

import math

import pytest
import torch

from fwp.ops import (
    causal_denominator,
    dpfp,
    elu_plus_one,
    favor,
    identity,
    orthogonal_random_projection,
    sum_normalize,
)

# ------------------------------------------------------------------ from-scratch implementations
# One vector (a list of floats) at a time, with python's math module only.


def elu_plus_one_by_hand(x: list[float]) -> list[float]:
    """``elu(x) + 1``: ``x + 1`` for ``x > 0``, ``exp(x)`` otherwise."""
    return [v + 1.0 if v > 0 else math.exp(v) for v in x]


def dpfp_by_hand(x: list[float], nu: int) -> list[float]:
    """``z = [relu(x), relu(-x)]`` (length ``n = 2 d_k``); block ``j = 1..ν`` of the output holds
    ``z[i] · z[(i − j) mod n]`` (``torch.roll(z, j)[i] = z[i − j]``)."""
    z = [max(v, 0.0) for v in x] + [max(-v, 0.0) for v in x]
    n = len(z)
    return [z[i] * z[(i - j) % n] for j in range(1, nu + 1) for i in range(n)]


def favor_by_hand(x: list[float], omega: list[list[float]]) -> list[float]:
    """``u = Ω x``; ``[exp(u − ‖x‖²/2), exp(−u − ‖x‖²/2)] / sqrt(2m)``."""
    m = len(omega)
    half_norm = 0.5 * sum(v * v for v in x)
    u = [sum(w * v for w, v in zip(row, x, strict=True)) for row in omega]
    features = [math.exp(ui - half_norm) for ui in u] + [math.exp(-ui - half_norm) for ui in u]
    return [f / math.sqrt(2 * m) for f in features]


def sum_normalize_by_hand(phi: list[float], eps: float) -> list[float]:
    """``φ / (Σ_j φ_j + ε)``."""
    total = sum(phi) + eps
    return [f / total for f in phi]


def rows(x: torch.Tensor) -> list[list[float]]:
    """The last dimension of ``x`` as python lists, one per leading index."""
    return x.reshape(-1, x.shape[-1]).tolist()


def by_hand(function, x: torch.Tensor, *args) -> torch.Tensor:
    """``function`` applied to every vector of ``x`` ``[..., d]``, back as a float64 tensor."""
    values = [function(row, *args) for row in rows(x)]
    return torch.tensor(values, dtype=torch.float64).reshape(*x.shape[:-1], -1)


@pytest.fixture
def keys() -> torch.Tensor:
    """float64 ``[B, H, T, d_k] = [2, 3, 5, 4]``, standard normal."""
    return torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ------------------------------------------------------------------ hand-checked values


def test_identity_and_elu_plus_one_values() -> None:
    """Catches ``elu(x) + 1`` replaced by another positive map (e.g. ``relu(x) + 1``, ``exp(x)``)."""
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.equal(identity(x), x)
    # elu(-1) + 1 = e^-1, elu(0) + 1 = 1, elu(2) + 1 = 3
    torch.testing.assert_close(elu_plus_one(x), torch.tensor([math.exp(-1.0), 1.0, 3.0], dtype=torch.float64))


def test_dpfp_values_pin_the_roll_offsets() -> None:
    """Catches wrong roll offsets, e.g. ``range(nu)`` instead of ``range(1, nu + 1)`` (which puts
    ``z ⊙ z`` in the first block), or rolling the other way.

    ``x = [1, 2, −3]``: ``z = [relu(x), relu(−x)] = [1, 2, 0, 0, 0, 3]``;
    ``roll(z, 1) = [3, 1, 2, 0, 0, 0]`` → ``z ⊙ roll(z, 1) = [3, 2, 0, 0, 0, 0]``;
    ``roll(z, 2) = [0, 3, 1, 2, 0, 0]`` → ``z ⊙ roll(z, 2) = [0, 6, 0, 0, 0, 0]``.
    """
    x = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    expected = torch.tensor([3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(dpfp(x, nu=1), expected[:6], rtol=0, atol=0)
    torch.testing.assert_close(dpfp(x, nu=2), expected, rtol=0, atol=0)


def test_favor_values_pin_the_scale_one_over_sqrt_2m() -> None:
    """Catches FAVOR+ scaled by ``1/sqrt(m)`` (or unscaled) instead of ``1/sqrt(2m)``, and a sign error
    in either half. ``eps`` stays 0: the scale is pinned on its own.

    ``x = [1, 0]``, ``Ω = I₂`` (``m = 2``): ``u = [1, 0]``, ``‖x‖²/2 = 0.5``, so
    ``φ = [e^{0.5}, e^{−0.5}, e^{−1.5}, e^{−0.5}] / sqrt(4)``; ``x = 0`` gives ``1/sqrt(2m) = 1/2``
    everywhere.
    """
    omega = torch.eye(2, dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[math.exp(0.5) / 2, math.exp(-0.5) / 2, math.exp(-1.5) / 2, math.exp(-0.5) / 2], [0.5] * 4],
        dtype=torch.float64,
    )
    torch.testing.assert_close(favor(x, omega), expected, rtol=1e-15, atol=0)


def test_favor_features_estimate_the_softmax_kernel_without_bias() -> None:
    """The point of the ``1/sqrt(2m)`` scale: ``E_Ω[φ(x) · φ(y)] = exp(x · y)`` (Choromanski et al. 2021,
    positive random features of the softmax kernel). A wrong scale ``c`` multiplies the estimate by
    ``2m c²`` (``1/sqrt(m)``: by 2). With ``m = 4096`` rows of the project's ``Ω`` the estimate is
    within a few percent."""
    generator = torch.Generator().manual_seed(1)
    omega = orthogonal_random_projection(4096, 4, generator=generator, dtype=torch.float64)
    x = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    y = torch.tensor([-0.1, 0.2, 0.5, 0.3], dtype=torch.float64)
    estimate = (favor(x, omega) * favor(y, omega)).sum()
    assert float(estimate) == pytest.approx(math.exp(float(x @ y)), rel=0.03)


def test_sum_normalize_values_include_eps() -> None:
    """Catches ``sum_normalize`` ignoring its ``eps``: ``[1, 3] / (1 + 3 + 4) = [1/8, 3/8]``, while
    ``eps = 0`` gives ``[1/4, 3/4]``."""
    phi = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(sum_normalize(phi, 4.0), torch.tensor([[0.125, 0.375]], dtype=torch.float64))
    torch.testing.assert_close(sum_normalize(phi), torch.tensor([[0.25, 0.75]], dtype=torch.float64))


def test_causal_denominator_values() -> None:
    """``z_i = z_0 + Σ_{j≤i} φ(k_j)``, ``den_i = φ(q_i) · z_i``. With ``z_0 = [1, 1]``,
    ``φ(k) = [[1, 0], [2, 1]]``, ``φ(q) = [[1, 1], [0, 2]]``: ``z_1 = [2, 1]``, ``den_1 = 3``;
    ``z_2 = [4, 2]``, ``den_2 = 4``. Without ``z_0``: ``den = [1, 2]``."""
    phi_k = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]]]], dtype=torch.float64)
    phi_q = torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]], dtype=torch.float64)
    den, z_last = causal_denominator(phi_q, phi_k, torch.ones(1, 1, 2, dtype=torch.float64))
    torch.testing.assert_close(den, torch.tensor([[[3.0, 4.0]]], dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(z_last, torch.tensor([[[4.0, 2.0]]], dtype=torch.float64), rtol=0, atol=0)
    den, _ = causal_denominator(phi_q, phi_k, None)
    torch.testing.assert_close(den, torch.tensor([[[1.0, 2.0]]], dtype=torch.float64), rtol=0, atol=0)


# ------------------------------------------------------------------ float64 against the plain-Python code


def test_elu_plus_one_equals_the_plain_python_formula(keys: torch.Tensor) -> None:
    """Catches a wrong branch of ``elu`` anywhere in a ``[B, H, T, d_k]`` tensor."""
    torch.testing.assert_close(elu_plus_one(keys), by_hand(elu_plus_one_by_hand, keys), rtol=1e-14, atol=0)


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_dpfp_equals_the_plain_python_formula(keys: torch.Tensor, nu: int) -> None:
    """Catches wrong roll offsets or directions, a wrong block order or size for ν = 1, 2, 3."""
    phi = dpfp(keys, nu)
    assert phi.shape == (*keys.shape[:-1], 2 * keys.shape[-1] * nu)
    torch.testing.assert_close(phi, by_hand(dpfp_by_hand, keys, nu), rtol=1e-14, atol=0)


def test_favor_equals_the_plain_python_formula(keys: torch.Tensor) -> None:
    """Catches a wrong scale, sign or norm term of FAVOR+, or ``Ω`` applied transposed (``m ≠ d_k``)."""
    omega = torch.randn(6, keys.shape[-1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = by_hand(favor_by_hand, keys, omega.tolist())
    assert expected.shape[-1] == 12
    torch.testing.assert_close(favor(keys, omega), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_sum_normalize_equals_the_plain_python_formula(keys: torch.Tensor, eps: float) -> None:
    """Catches ``eps`` ignored or the sum taken over the wrong dimension."""
    phi = dpfp(keys, 2)
    expected = by_hand(sum_normalize_by_hand, phi, eps)
    torch.testing.assert_close(sum_normalize(phi, eps), expected, rtol=1e-14, atol=0)


def test_orthogonal_projection_rows_are_orthogonal_within_each_block() -> None:
    """``Ω`` ``[m, d]``: blocks of ``d`` rows, mutually orthogonal inside a block (FAVOR+'s variance
    reduction), every row non-zero; ``m`` need not be a multiple of ``d``."""
    d, m = 4, 10
    omega = orthogonal_random_projection(
        m, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    assert omega.shape == (m, d)
    for start in range(0, m, d):
        block = omega[start : start + d]
        gram = block @ block.T
        torch.testing.assert_close(
            gram - torch.diag(torch.diag(gram)), torch.zeros_like(gram), rtol=0, atol=1e-12
        )
        assert bool((torch.diag(gram) > 0).all())
