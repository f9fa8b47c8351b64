"""Learning-rate schedules and optimiser construction, one implementation shared by every task.

A schedule is a multiplier of the peak learning rate per optimiser step ``s`` (0-based; the update it
sets is the ``n = s + 1``-th). With ``w = warmup_steps`` and ``f₀ = warmup_init_factor``:

- warm-up (``n ≤ w``): ``f₀ + (1 − f₀) · n / w``, linear, reaching 1 at the ``w``-th update;
- then ``constant``: 1; ``inverse_sqrt``: ``√(w / n)``; ``cosine``: ``½(1 + cos(π·p))`` with
  ``p = (s − w) / (total_steps − w)`` clipped to [0, 1] (0 at the last step).

The translation task uses ``inverse_sqrt`` with ``f₀ = warmup_init_lr / lr`` (fairseq's schedule, which
lags this one by one update: fairseq's first update uses ``warmup_init_lr`` itself); the language model
uses any of the three with ``f₀ = 0`` (Transformer-XL's warm-up ``lr · n / w``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal

import torch

Schedule = Literal["cosine", "constant", "inverse_sqrt"]
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "inverse_sqrt")


def learning_rate_factor(
    step: int,
    *,
    schedule: Schedule,
    warmup_steps: int,
    total_steps: float = math.inf,
    warmup_init_factor: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based); see the module
    docstring for the formulas."""
    update = step + 1
    if update <= warmup_steps:
        return warmup_init_factor + (1.0 - warmup_init_factor) * update / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / update)
    progress = min(1.0, max(0.0, step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_schedule(schedule: str, total_steps: float) -> None:
    """A ValueError naming ``schedule`` when it is unknown, or ``cosine`` without a finite step count."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got schedule={schedule!r}")
    if schedule == "cosine" and not math.isfinite(total_steps):
        raise ValueError(
            "schedule='cosine' needs a finite number of steps: set model max_steps or the Trainer's "
            "max_steps/max_epochs"
        )


def adam_with_schedule(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    schedule: Schedule | None = None,
    warmup_steps: int = 0,
    total_steps: float = math.inf,
    warmup_init_factor: float = 0.0,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: Adam (AdamW with ``decoupled_weight_decay``) and,
    unless ``schedule`` is None, a per-step ``LambdaLR`` following ``learning_rate_factor``."""
    optimizer_class = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
    optimizer = optimizer_class(parameters, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if schedule is None:
        return {"optimizer": optimizer}
    check_schedule(schedule, total_steps)
    factor: Callable[[int], float] = partial(
        learning_rate_factor,
        schedule=schedule,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        warmup_init_factor=warmup_init_factor,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
