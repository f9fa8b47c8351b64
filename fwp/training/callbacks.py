"""Callbacks every fwp run gets: a guard against non-finite losses, a report of where logs go, the
learning rate in the logs."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The newest checkpoint the trainer has written, or a note that there is none."""
    callback = trainer.checkpoint_callback
    paths = [] if callback is None else [callback.last_model_path, callback.best_model_path]
    written = [path for path in paths if path]
    return written[0] if written else "none written yet"


NON_FINITE_POLICIES = ("stop", "skip")


class NonFiniteLossGuard(L.Callback):
    """What happens when a training loss is NaN or infinite (checked before its backward pass), or a
    finite loss gives a NaN or infinite gradient (checked before the optimizer step; not with fp16's
    gradient scaler, which skips such steps itself and lowers its scale).

    - ``policy="stop"``: raise ``FloatingPointError`` naming the global step, the batch and the last
      good checkpoint; the weights are never updated with the bad loss.
    - ``policy="skip"``: the batch is dropped: its gradients (the whole accumulation window's under
      gradient accumulation) are discarded before the optimizer step, so no parameter and no optimizer
      state (Adam moments, step count) changes; the step counter and LR schedulers still advance. The
      number of skipped batches is logged as ``train/skipped_batches`` and saved in checkpoints.
      After ``max_consecutive_skips`` skipped batches in a row training stops as with ``"stop"``.

    Under a distributed strategy the ranks decide together: a non-finite loss on any rank stops or
    skips on all of them (its gradients reach every rank through the all-reduce).

    Args:
        policy: ``"stop"`` or ``"skip"``.
        max_consecutive_skips: consecutive skipped batches tolerated by ``"skip"`` (>= 1).
    """

    def __init__(self, policy: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10) -> None:
        if policy not in NON_FINITE_POLICIES:
            raise ValueError(
                f"NonFiniteLossGuard: policy must be one of {NON_FINITE_POLICIES}, got policy={policy!r}"
            )
        if max_consecutive_skips < 1:
            raise ValueError(
                "NonFiniteLossGuard: max_consecutive_skips must be >= 1, "
                f"got max_consecutive_skips={max_consecutive_skips}"
            )
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_batches = 0
        self.consecutive_skips = 0
        self._discard_gradients = False

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            value = float(loss.detach())
            where = f"{value}" if trainer.world_size == 1 else f"{value} on rank {trainer.global_rank}"
            self.skip_or_stop(trainer, f"non-finite training loss ({where})")

    def skip_or_stop(self, trainer: L.Trainer, what: str) -> None:
        """``what`` went non-finite (on some rank): mark the step's gradients for discarding under
        ``skip`` (while consecutive skips are tolerated), else raise the ``FloatingPointError`` naming it,
        the step, the batch and the last good checkpoint."""
        if self.policy == "skip" and self.consecutive_skips + 1 < self.max_consecutive_skips:
            self._discard_gradients = True
            return
        repeated = f" ({self.consecutive_skips + 1} batches in a row)" if self.policy == "skip" else ""
        raise FloatingPointError(
            f"{what}{repeated} at global step {trainer.global_step} (batch "
            f"{trainer.fit_loop.epoch_loop.batch_idx} of epoch {trainer.current_epoch}); "
            f"last good checkpoint: {last_good_checkpoint(trainer)}"
        )

    def check_gradients(self, trainer: L.Trainer, parameters: list[Tensor]) -> None:
        """A non-finite gradient after a finite loss (not under fp16's scaler): ``skip_or_stop``."""
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        gradients = [p.grad for p in parameters if p.grad is not None]
        if not gradients:
            return
        finite = bool(torch.stack([torch.isfinite(g).all() for g in gradients]).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self.skip_or_stop(trainer, "non-finite gradient after a finite loss")

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if not self._discard_gradients:
            self.check_gradients(trainer, parameters)
        if self._discard_gradients:
            for parameter in parameters:
                parameter.grad = None
            self._discard_gradients = False
            self.skipped_batches += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0
        if self.policy == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, int]:
        return {"skipped_batches": self.skipped_batches, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_batches = state_dict["skipped_batches"]
        self.consecutive_skips = state_dict["consecutive_skips"]


class RunDirectoryReport(L.Callback):
    """Prints where TensorBoard logs and checkpoints of this run are written."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None and trainer.logger.log_dir is not None:
            log_dir = trainer.logger.log_dir
            rank_zero_info(f"fwp: TensorBoard logs in {log_dir}  (view: tensorboard --logdir {log_dir})")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"fwp: checkpoint {last_good_checkpoint(trainer)}")


class LearningRateLogger(L.Callback):
    """Logs the learning rate of every optimizer's first parameter group as ``lr`` (``lr/<i>`` for
    further optimizers) at every training step; works with or without a logger."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        for index, optimizer in enumerate(trainer.optimizers):
            name = "lr" if index == 0 else f"lr/{index}"
            pl_module.log(name, optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
