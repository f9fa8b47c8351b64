"""Preemption: a termination signal during training ends the run cleanly with a resumable checkpoint.

A signal handler only records the signal; the work happens at the end of the running training batch
that completes an optimizer step (the last micro-batch of a gradient-accumulation window, or of the
epoch), the one point where model, optimizer, loop progress and data position agree, so the checkpoint
resumes exactly (one written from inside a signal handler, or between the micro-batches of a window,
whose summed gradients are in no checkpoint, would not).

- Under SLURM with Lightning's auto-requeue (``SLURMEnvironment(auto_requeue=True)``, the default when
  SLURM is detected) the requeue signal (``#SBATCH --signal=SIGUSR1@90``) is handed to Lightning's own
  handler at that point: it writes ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` and requeues the
  job; the requeued job resumes from it automatically.
- Otherwise (plain SIGTERM from a scheduler or ``kill``, or SIGUSR1) the checkpoint is written as
  ``<checkpoint dir>/<filename>`` and training stops; resume with ``--ckpt_path`` pointing to it.

In both cases ``last.ckpt`` (a ``ModelCheckpoint`` with ``save_last``) is written first at the same step,
so that it is the newest state of the run and the preemption checkpoint records it as the run's last
checkpoint: the resumed run then overwrites ``last.ckpt`` instead of starting ``last-v1.ckpt``.

Under DDP the ranks decide together: a signal seen by any rank stops all of them at the same batch.
When both arrive before that batch ends (SLURM sends SIGTERM at the time limit, possibly while a long
evaluation runs after the SIGUSR1 warning), the requeue signal wins, so the job is still requeued.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from fwp.training.checkpointing import save_last_checkpoints

HANDLED_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_number(name: str) -> signal.Signals:
    """``"SIGTERM"`` → ``signal.SIGTERM``; unknown names fail with the list of known ones."""
    known = sorted(member.name for member in signal.Signals)
    if name not in known:
        raise ValueError(f"PreemptionCheckpoint: unknown signal name {name!r}; known: {', '.join(known)}")
    return signal.Signals[name]


def checkpoint_directory(trainer: L.Trainer) -> str:
    """Where the trainer's ``ModelCheckpoint`` writes, or ``default_root_dir`` without one."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return callback.dirpath
    return trainer.default_root_dir


def slurm_requeue_signal(trainer: L.Trainer) -> signal.Signals | None:
    """The signal Lightning's SLURM auto-requeue acts on (SIGUSR1 by default), or None outside it."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return signal.Signals(environment.requeue_signal)
    return None


def completes_an_optimizer_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether training batch ``batch_idx`` (ending now) was the last of its gradient-accumulation
    window, or of the epoch: the optimizer has just stepped and no gradient is pending."""
    window_end = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
    return window_end or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class PreemptionCheckpoint(L.Callback):
    """On one of ``signals`` during training: at the end of the running batch, save a checkpoint and
    stop training (exit status 0), or let Lightning's SLURM auto-requeue save and requeue.

    Args:
        signals: names of the signals to handle (default SIGTERM and SIGUSR1).
        filename: file name of the checkpoint written outside SLURM auto-requeue, in the
            ``ModelCheckpoint`` directory (``default_root_dir`` if there is none).
    """

    def __init__(self, signals: tuple[str, ...] = HANDLED_SIGNALS, filename: str = "preempted.ckpt") -> None:
        self.signals = tuple(signal_number(name) for name in signals)
        self.filename = filename
        self.received: signal.Signals | None = None
        self._requeue_signal: signal.Signals | None = None
        self._replaced: dict[signal.Signals, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: remember the signal, unless a requeue signal is already pending."""
        if self.received is None or self.received != self._requeue_signal:
            self.received = signal.Signals(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        self._requeue_signal = slurm_requeue_signal(trainer)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._replaced[signum] = signal.signal(signum, self._record)

    def agreed_signal(self, trainer: L.Trainer) -> signal.Signals | None:
        """The signal received by any rank, the same on every rank: the requeue signal if any rank has
        it, else the highest number (one all-reduce per batch under a distributed strategy)."""
        if trainer.world_size == 1:
            return self.received
        # One number per rank: the signal, plus 256 for the requeue signal, so that the max prefers it.
        code = 0 if self.received is None else int(self.received)
        if self.received is not None and self.received == self._requeue_signal:
            code += 256
        local = torch.tensor(float(code), device=trainer.strategy.root_device)
        number = int(trainer.strategy.reduce(local, reduce_op="max").item())
        return signal.Signals(number % 256) if number else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        signum = self.agreed_signal(trainer)
        if signum is None or not completes_an_optimizer_step(trainer, batch_idx):
            return
        self.restore_handlers()
        save_last_checkpoints(trainer)
        if signum == self._requeue_signal:
            rank_zero_info(
                f"fwp: {signum.name} at global step {trainer.global_step}: SLURM checkpoint, requeue"
            )
            trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)
        else:
            path = os.path.join(checkpoint_directory(trainer), self.filename)
            trainer.save_checkpoint(path)
            rank_zero_info(
                f"fwp: {signum.name} at global step {trainer.global_step}: saved {path}; "
                f"resume with --ckpt_path {path}"
            )
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # Lightning would evaluate once more on stopping: no time for that

    def restore_handlers(self) -> None:
        """Give the signals back to the handlers they had before training started."""
        for signum, handler in self._replaced.items():
            signal.signal(signum, handler)
        self._replaced = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.restore_handlers()
