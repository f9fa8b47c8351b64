"""What the task tests share to run Lightning in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread inside (tiny models run fastest so and leave the other core alone), the
    previous number restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A ``Trainer`` without logger, checkpoints, progress bar, model summary or sanity validation;
    ``kwargs`` add to or override those settings."""
    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**(options | kwargs))
