"""``sum_normalize``'s hand-written backward, ``∂L/∂φ = (g − (g · y)) / S``, against autograd through
the formula ``φ / (Σ_j φ_j + ε)`` and against finite differences (float64)."""

from __future__ import annotations

import pytest
import torch

from fwp.ops import dpfp, sum_normalize


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
def test_gradient_equals_autograd_through_the_formula(eps: float) -> None:
    """Catches a wrong sign, a missing ``g · y`` term or an ε left out of ``S`` in the backward."""
    torch.manual_seed(0)
    phi = dpfp(torch.randn(2, 3, 5, 4, dtype=torch.float64), 2).requires_grad_()
    grad = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    (expected,) = torch.autograd.grad(phi / (phi.sum(-1, keepdim=True) + eps), phi, grad)
    (actual,) = torch.autograd.grad(sum_normalize(phi, eps), phi, grad)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck() -> None:
    phi = (torch.rand(3, 6, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sum_normalize(x, 1e-3), (phi,))
