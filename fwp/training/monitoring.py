"""What every task shows in TensorBoard besides its own losses and metrics (see ``docs/monitoring.md``):

- ``train/grad_norm``: the global 2-norm ``‖g‖ = (Σ_p ‖∂L/∂p‖²)^½`` of the gradients an optimizer
  step is about to apply, before gradient clipping (``GradientNormLogging``, a LightningModule mixin);
- throughput (``TaskThroughput``, Lightning's ``ThroughputMonitor``): sequences and tokens per second
  counted by the task's ``throughput_counts(batch)``;
- ``hp_metric``: the best value so far of the task's validation metric (``BestMetricLogger``), so the
  HPARAMS tab of TensorBoard compares runs by it;
- text samples at each validation (``log_text``);
- the progress bar on stderr (``StderrProgressBar``), so that stdout holds only a command's results.
"""

from __future__ import annotations

import contextlib
import html
import math
import sys
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor


def gradient_norm(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> Tensor:
    """``(Σ_p ‖grad p‖²)^½`` over the parameters of ``optimizer`` that have a gradient (0 if none).
    Under FSDP every rank holds a shard of the gradients: the squares are summed across ranks; under
    DDP the gradients are already the same on every rank."""
    gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not gradients:
        return torch.zeros((), device=trainer.strategy.root_device)
    squares = torch.nn.utils.get_total_norm(gradients, norm_type=2.0).double().square()
    if isinstance(trainer.strategy, FSDPStrategy):
        squares = trainer.strategy.reduce(squares, reduce_op="sum")
    return squares.sqrt().float()


class GradientNormLogging:
    """LightningModule mixin: logs ``train/grad_norm`` (``gradient_norm``) at every optimizer step,
    after every change a module or callback makes to the gradients (unscaling, loss normalisation,
    discarded steps) and before the Trainer's ``gradient_clip_val`` clips them; then clips as usual.

    ``flops_per_batch`` None tells ``ThroughputMonitor`` that no FLOP count is available."""

    flops_per_batch: int | None = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        norm = gradient_norm(self.trainer, optimizer)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class TaskThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` with the counts of the task: the module's
    ``throughput_counts(batch) -> (sequences, tokens)`` (every fwp task module has it). Logged every
    ``log_every_n_steps`` once ``window_size`` batches have run (rates over the last ``window_size``
    batches), as ``<stage>/device/samples_per_sec`` (sequences per second per device),
    ``<stage>/device/items_per_sec`` (tokens per second per device; without ``/device``: all devices
    together, when there are several) and the totals
    ``<stage>/samples``, ``<stage>/lengths`` (tokens), ``<stage>/time`` (seconds), ``<stage>`` being
    ``train``, ``validate``, ``test`` or ``predict``."""

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(
            batch_size_fn=self.sequences, length_fn=self.tokens, window_size=window_size, separator="/"
        )
        self.counts: Callable[[Any], tuple[int, int]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.counts = getattr(pl_module, "throughput_counts", None)
        if self.counts is None:
            raise TypeError(
                f"{type(pl_module).__name__} has no throughput_counts(batch) -> (sequences, tokens), "
                "which TaskThroughput needs"
            )
        super().setup(trainer, pl_module, stage)

    def sequences(self, batch: Any) -> int:
        return int(self.counts(batch)[0])

    def tokens(self, batch: Any) -> int:
        return int(self.counts(batch)[1])


class BestMetricLogger(L.Callback):
    """Logs ``hp_metric`` after every validation run of ``fit`` (sanity checks excluded): the best value
    so far of the module's ``best_metric`` (``best_metric_mode`` ``min`` or ``max``), e.g. the lowest
    ``valid/ppl``. TensorBoard's HPARAMS tab shows it beside the run's hyperparameters (instead of the
    −1 Lightning writes at the start). A validation run without that metric changes nothing. The best
    value is saved in checkpoints, so a resumed run continues it."""

    def __init__(self) -> None:
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name, mode = getattr(pl_module, "best_metric", None), getattr(pl_module, "best_metric_mode", "min")
        if trainer.sanity_checking or trainer.state.fn != "fit" or name not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[name])
        better = min if mode == "min" else max
        if math.isfinite(value):
            self.best = value if self.best is None else better(self.best, value)
        if self.best is None:
            return
        trainer.callback_metrics["hp_metric"] = torch.tensor(self.best)
        for logger in trainer.loggers:
            logger.log_metrics({"hp_metric": self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, float | None]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, float | None]) -> None:
        self.best = state_dict["best"]


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar, written to stderr instead of stdout: stdout then carries only the
    results a command prints (``predict`` continuations or translations), so ``> file`` keeps them
    clean. Each bar is created while stdout points at stderr (Lightning opens its bars on stdout)."""

    @staticmethod
    def on_stderr(init: Callable[[], Tqdm]) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return init()

    def init_sanity_tqdm(self) -> Tqdm:
        return self.on_stderr(super().init_sanity_tqdm)

    def init_train_tqdm(self) -> Tqdm:
        return self.on_stderr(super().init_train_tqdm)

    def init_validation_tqdm(self) -> Tqdm:
        return self.on_stderr(super().init_validation_tqdm)

    def init_test_tqdm(self) -> Tqdm:
        return self.on_stderr(super().init_test_tqdm)

    def init_predict_tqdm(self) -> Tqdm:
        return self.on_stderr(super().init_predict_tqdm)


def labelled_text(label: str, text: str) -> str:
    """``**label:** text`` for a Markdown text summary, with ``<``, ``>``, ``&`` escaped so that tokens
    such as ``<eos>`` or ``<unk>`` stay visible (TensorBoard drops them as HTML tags otherwise)."""
    return f"**{label}:** {html.escape(text, quote=False)}"


def log_text(module: L.LightningModule, tag: str, text: str) -> None:
    """``text`` as a TensorBoard text summary ``tag`` at the current step (rank 0, TensorBoard loggers
    only; Markdown is rendered: end a line with two spaces to break it)."""
    if module._trainer is None or not module.trainer.is_global_zero:
        return
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text(tag, text, global_step=module.global_step)
