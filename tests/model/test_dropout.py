"""``fwp.model.dropout.Dropout``: ``nn.Dropout``'s distribution and train/eval semantics, its mask drawn
as ``rand_like(x) ≥ p``."""

from __future__ import annotations

import pytest
import torch

from fwp.model.dropout import Dropout


def test_the_mask_is_rand_like_at_least_p_and_survivors_are_rescaled() -> None:
    """Same seed, same numbers: ``y = x ⊙ [u ≥ p] / (1 − p)`` with ``u = rand_like(x)``. Catches the mask
    drawn another way (``bernoulli_``, ``u < p``) and a wrong scale."""
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.manual_seed(3)
    y = Dropout(0.25).train()(x)
    torch.manual_seed(3)
    expected = x * (torch.rand_like(x) >= 0.25) / 0.75
    torch.testing.assert_close(y, expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_a_fraction_p_is_dropped_and_the_mean_is_kept(p: float) -> None:
    """Over 10⁶ ones: the dropped fraction is ``p`` within 5 standard deviations and every survivor is
    ``1 / (1 − p)``, so ``E[y] = x``."""
    n = 1_000_000
    y = Dropout(p).train()(torch.ones(n))
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))


def test_the_gradient_is_the_same_mask_and_eval_is_the_identity() -> None:
    x = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    dropout = Dropout(0.5).train()
    y = dropout(x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, (y != 0).double() * 2.0)
    assert dropout.eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_in_place_and_rate_one_behave_like_nn_dropout() -> None:
    x = torch.randn(4, 4)
    torch.manual_seed(5)
    expected = Dropout(0.5).train()(x)
    torch.manual_seed(5)
    inplace = x.clone()
    assert Dropout(0.5, inplace=True).train()(inplace) is inplace
    torch.testing.assert_close(inplace, expected)
    torch.testing.assert_close(Dropout(1.0).train()(x), torch.zeros_like(x))
