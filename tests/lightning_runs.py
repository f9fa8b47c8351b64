"""What the task tests share to run Lightning in-process."""

from __future__ import annotations

from typing import Any

import lightning as L


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
