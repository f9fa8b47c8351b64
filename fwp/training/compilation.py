"""The task option ``compile: true``: the backbone's Transformer blocks under ``torch.compile``, and the
compile warm-up reported to the user.

``CompiledBackbone`` is a LightningModule mixin for tasks whose backbone is ``self.model`` and whose
hyperparameters hold ``compile``. Lightning calls ``configure_model`` before every ``fit``, ``validate``,
``test`` and ``predict``; the blocks are compiled there once (``fwp.model.compile_blocks``), in place,
so checkpoints keep their keys. Compilation itself happens in the first calls of each new call
structure (a training step, an evaluation step): ``CompileWarmupReport`` prints how long the first
batch of every loop took. Token-by-token decoding (LM sampling, MT greedy and beam search) runs eager
(``decoding``): every step has a new position and length, and recompiling the blocks per step would
cost more than it saves and exceeds dynamo's recompile limit.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from fwp.model import compile_blocks


class CompileWarmupReport(L.Callback):
    """Prints, once per loop (train, validation, test, predict), the wall time of its first batch, which
    compiles: ``fwp: torch.compile warm-up (train): the first batch took 41.2 s``; the lines are also
    kept in ``reports``."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.first_batch_seconds: dict[str, float] = {}

    @property
    def reports(self) -> list[str]:
        return [
            f"fwp: torch.compile warm-up ({loop}): the first batch took {seconds:.1f} s"
            for loop, seconds in self.first_batch_seconds.items()
        ]

    def _start(self, loop: str) -> None:
        self.started.setdefault(loop, time.perf_counter())

    def _end(self, loop: str) -> None:
        if loop in self.started and loop not in self.first_batch_seconds:
            self.first_batch_seconds[loop] = time.perf_counter() - self.started[loop]
            rank_zero_info(self.reports[-1])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start("train")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._end("train")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start("validation")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._end("validation")

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start("test")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._end("test")

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start("predict")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._end("predict")


class CompiledBackbone:
    """LightningModule mixin: with ``hparams.compile`` true, ``self.model``'s Transformer blocks are
    compiled (``fullgraph=True``) before the first batch and the warm-up is reported."""

    def configure_model(self) -> None:
        if self.hparams.compile:
            blocks = compile_blocks(self.model)
            rank_zero_info(
                f"fwp: torch.compile: {blocks} Transformer blocks compiled with fullgraph=True; the first "
                "batch of each loop compiles them (about a minute on a laptop CPU, once per new shape)"
            )

    def configure_callbacks(self) -> list[L.Callback]:
        return [CompileWarmupReport()] if self.hparams.compile else []


def decoding(module: L.LightningModule) -> AbstractContextManager:
    """The context token-by-token decoding runs in: eager when ``module.hparams.compile`` is set."""
    return torch.compiler.set_stance("force_eager") if module.hparams.compile else nullcontext()
