"""The one learning-rate schedule implementation (``fwp.training.optimization``) every task uses."""

from __future__ import annotations

import math

import pytest
import torch

from fwp.training.optimization import adam_with_schedule, learning_rate_factor


def test_schedule_warms_up_then_follows_its_shape() -> None:
    factor = lambda step, schedule: learning_rate_factor(  # noqa: E731
        step, schedule=schedule, warmup_steps=10, total_steps=110
    )
    assert factor(0, "cosine") == pytest.approx(0.1)
    assert factor(9, "cosine") == pytest.approx(1.0)
    assert factor(60, "cosine") == pytest.approx(0.5)
    assert factor(110, "cosine") == pytest.approx(0.0)
    assert factor(500, "cosine") == pytest.approx(0.0)
    assert factor(50, "constant") == 1.0
    assert factor(39, "inverse_sqrt") == pytest.approx(0.5)


def test_warm_up_starts_from_the_initial_factor() -> None:
    """Translation's warm-up from ``warmup_init_lr``: the n-th of w updates gets f₀ + (1 − f₀)·n/w."""
    factor = lambda step: learning_rate_factor(  # noqa: E731
        step, schedule="inverse_sqrt", warmup_steps=100, warmup_init_factor=0.01
    )
    assert factor(0) == pytest.approx(0.01 + 0.99 / 100)
    assert factor(49) == pytest.approx(0.01 + 0.99 / 2)
    assert factor(99) == 1.0
    assert factor(399) == pytest.approx(0.5)


def test_without_warm_up_the_decay_starts_at_once() -> None:
    assert learning_rate_factor(0, schedule="inverse_sqrt", warmup_steps=0) == 1.0
    assert learning_rate_factor(3, schedule="inverse_sqrt", warmup_steps=0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("schedule", "total_steps", "message"),
    [("linear", 10, "schedule must be one of"), ("cosine", math.inf, "finite number of steps")],
)
def test_bad_schedules_are_refused(schedule: str, total_steps: float, message: str) -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=message):
        adam_with_schedule([weight], lr=0.1, schedule=schedule, total_steps=total_steps)


def test_adam_or_adamw_with_the_given_settings() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    plain = adam_with_schedule([weight], lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.5)
    assert set(plain) == {"optimizer"} and type(plain["optimizer"]) is torch.optim.Adam
    group = plain["optimizer"].param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.1, (0.8, 0.9), 1e-6, 0.5)
    decoupled = adam_with_schedule([weight], lr=0.1, decoupled_weight_decay=True, schedule="constant")
    assert type(decoupled["optimizer"]) is torch.optim.AdamW
    assert decoupled["lr_scheduler"]["interval"] == "step"
