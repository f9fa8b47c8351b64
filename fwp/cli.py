"""The project's LightningCLI: task model and data module chosen by ``class_path`` in YAML.

Sizes that come from the data are linked into the model at instantiation; a link applies only when
both the chosen data module and the chosen model have the named attribute/argument.

Every run also gets, whatever its YAML says:
- checkpoints written atomically (``AtomicCheckpointIO``, unless the YAML gives a CheckpointIO plugin)
  and random number generator states saved in them (``RandomStateCheckpoint``), for exact resume;
- ``non_finite_loss: {policy: stop|skip, max_consecutive_skips: N}`` (``NonFiniteLossGuard``);
- ``preemption: {signals: [SIGTERM, SIGUSR1], filename: preempted.ckpt}`` (``PreemptionCheckpoint``):
  a termination signal ends training cleanly with a checkpoint (or SLURM requeue);
- TensorBoard as the logger unless the YAML chooses another, the learning rate in the logs,
  throughput (``throughput: {window_size: N}``, ``TaskThroughput``) and ``hp_metric``, the best
  validation metric (``BestMetricLogger``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from fwp.callbacks import LearningRateLogger, NonFiniteLossGuard, RunDirectoryReport
from fwp.checkpointing import (
    AtomicCheckpointIO,
    CheckpointLoadError,
    RandomStateCheckpoint,
    verify_checkpoint_file,
)
from fwp.data.files import DataError
from fwp.monitoring import BestMetricLogger, TaskThroughput
from fwp.preemption import PreemptionCheckpoint

# Every task model that a data module with the source attribute can be paired with must take the
# target argument: jsonargparse stores a link whose target is missing as an extra keyword, which then
# breaks loading that model's checkpoint (``--ckpt_path``).
DATA_TO_MODEL_LINKS = (
    ("num_keys", "num_keys"),
    ("vocab_size", "vocab_size"),
)

USER_ERRORS = (ValueError, FileNotFoundError, TypeError)
RUN_ERRORS = (CheckpointLoadError, FloatingPointError, DataError)


def trainer_defaults() -> dict[str, Any]:
    """TensorBoard as the default logger; the always-on callbacks are added to any the YAML lists."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "fwp"},
        },
        "callbacks": [
            RunDirectoryReport(),
            LearningRateLogger(),
            RandomStateCheckpoint(),
            BestMetricLogger(),
        ],
    }


def resumed_version(logger: Any, ckpt_path: str) -> str | None:
    """The version directory ``<save_dir>/<name>/<version>/checkpoints/`` that ``ckpt_path`` lies in,
    if ``logger`` is a TensorBoard logger with that ``save_dir`` and ``name`` and no version of its own:
    resuming there keeps the logs and the ModelCheckpoint directory (its best/top-k tracking) of the
    interrupted run instead of starting ``version_<n+1>``."""
    class_path = getattr(logger, "class_path", "") if logger is not None else ""
    if not class_path.endswith("TensorBoardLogger") or logger.init_args.get("version") is not None:
        return None
    checkpoint_dir = Path(ckpt_path).resolve().parent
    version_dir = checkpoint_dir.parent
    name = logger.init_args.get("name") or "lightning_logs"
    run_dir = Path(logger.init_args.save_dir).resolve() / str(name)
    if checkpoint_dir.name != "checkpoints" or version_dir.parent != run_dir:
        return None
    return version_dir.name


def exit_with_user_error(error: BaseException) -> None:
    """End with the error's message on stderr and status 2 (``FWP_DEBUG=1``: re-raise, full trace)."""
    if os.environ.get("FWP_DEBUG") == "1":
        raise error
    print(f"fwp: error: {type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(2) from error


class FwpCLI(LightningCLI):
    """LightningCLI with the data→model links, TensorBoard by default, and clear user errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.add_lightning_class_args(NonFiniteLossGuard, "non_finite_loss")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(TaskThroughput, "throughput")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as usual; a ``--ckpt_path`` file must be a complete, uncorrupted checkpoint (checked
        before LightningCLI reads hyperparameters from it). ``fit`` from a checkpoint inside a version
        directory of the run's TensorBoard logger continues in that version (``resumed_version``)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            verify_checkpoint_file(ckpt_path)
            if subcommand == "fit":
                logger = self.config.fit.trainer.get("logger")
                version = resumed_version(logger, ckpt_path)
                if version is not None:
                    logger.init_args.version = version

    def instantiate_classes(self) -> None:
        """Instantiate as usual; a configuration mistake that surfaces only when a class is built
        (unknown attention name, missing data file) ends with its message instead of a deep trace
        (set ``FWP_DEBUG=1`` to see the trace)."""
        try:
            super().instantiate_classes()
        except USER_ERRORS as error:
            exit_with_user_error(error)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with ``AtomicCheckpointIO`` added to its plugins unless one is a CheckpointIO."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)


def main(args: ArgsType = None, run: bool = True) -> FwpCLI:
    """Entry point of ``python cli.py {fit,validate,test,predict} --config conf/....yaml``.

    An unreadable ``--ckpt_path`` or a non-finite loss ends the run with its message (status 2)."""
    import lightning as L

    try:
        return FwpCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except RUN_ERRORS as error:
        exit_with_user_error(error)
