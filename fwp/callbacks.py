"""Callbacks every fwp run gets: a guard against non-finite losses and a report of where logs go."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The newest checkpoint the trainer has written, or a note that there is none."""
    callback = trainer.checkpoint_callback
    paths = [] if callback is None else [callback.last_model_path, callback.best_model_path]
    written = [path for path in paths if path]
    return written[0] if written else "none written yet"


class NonFiniteLossGuard(L.Callback):
    """Stops training with an error naming the step and the last good checkpoint when the training
    loss is NaN or infinite (instead of silently training a broken model)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite training loss ({value}) at global step {trainer.global_step} "
                f"(batch {batch_idx} of epoch {trainer.current_epoch}); "
                f"last good checkpoint: {last_good_checkpoint(trainer)}"
            )


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
