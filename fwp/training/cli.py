"""The project's LightningCLI: task model and data module chosen by ``class_path`` in YAML.

Sizes that come from the data are linked into the model at instantiation; a link applies only when
both the chosen data module and the chosen model have the named attribute/argument.

Every run also gets, whatever its YAML says:
- checkpoints written atomically (``AtomicCheckpointIO``, unless the YAML gives a CheckpointIO plugin)
  and random number generator states saved in them (``RandomStateCheckpoint``), for exact resume;
  ``last.ckpt`` written again at the end of ``fit`` if older than the final step (``LastCheckpointAtEnd``);
- ``non_finite_loss: {policy: stop|skip, max_consecutive_skips: N}`` (``NonFiniteLossGuard``);
- ``preemption: {signals: [SIGTERM, SIGUSR1], filename: preempted.ckpt}`` (``PreemptionCheckpoint``):
  a termination signal ends training cleanly with a checkpoint (or SLURM requeue);
- TensorBoard as the logger unless the YAML chooses another, the learning rate in the logs,
  throughput (``throughput: {window_size: N}``, ``TaskThroughput``) and ``hp_metric``, the best
  validation metric (``BestMetricLogger``).

``--ckpt_path`` (any subcommand): the checkpoint's saved model arguments stand in for the ones the user
does not give; a value given on the command line or in a ``--config`` file wins (LightningCLI's own
``_parse_ckpt_path`` puts the checkpoint's values over the user's). The given values must agree with the
checkpoint on the model's ``ARCHITECTURE_ARGUMENTS`` (a class attribute of each task model: the
arguments that shape the weights or what they compute; every argument of a model without it), and the
configured model must be the checkpoint's class; otherwise the run stops with a
``CheckpointMismatchError`` naming each conflicting argument and both values. See ``docs/runs.md``.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fwp.data.files import DataError
from fwp.training.callbacks import LearningRateLogger, NonFiniteLossGuard, RunDirectoryReport
from fwp.training.checkpoint_arguments import (
    architecture_arguments,
    architecture_conflicts,
    backbone_defaults,
    import_class,
    is_local_checkpoint_path,
    nested_value,
    resolved_backbone,
    run_config_hint,
    with_nested_backbone,
)
from fwp.training.checkpointing import (
    AtomicCheckpointIO,
    CheckpointLoadError,
    CheckpointMismatchError,
    LastCheckpointAtEnd,
    RandomStateCheckpoint,
    read_checkpoint_hyperparameters,
)
from fwp.training.monitoring import BestMetricLogger, StderrProgressBar, TaskThroughput
from fwp.training.preemption import PreemptionCheckpoint
from fwp.training.run_directories import RunDirectoryError, claim_version_directory, resumed_version
from fwp.training.user_errors import (
    USER_ERRORS,
    exit_with_user_error,
    failed_allocation,
    one_line,
    reason_in_union,
)

# Every task model that a data module with the source attribute can be paired with must take the
# target argument: jsonargparse stores a link whose target is missing as an extra keyword, which then
# breaks loading that model's checkpoint (``--ckpt_path``).
DATA_TO_MODEL_LINKS = (
    ("num_keys", "num_keys"),
    ("vocab_size", "vocab_size"),
)


# MisconfigurationException: Lightning refusing trainer options (an accelerator this machine lacks, ...).
RUN_ERRORS = (
    CheckpointLoadError,
    CheckpointMismatchError,
    FloatingPointError,
    DataError,
    RunDirectoryError,
    MisconfigurationException,
)


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
            LastCheckpointAtEnd(),
        ],
    }


def as_list(value: Any) -> list[Any]:
    """A trainer option that takes one item or several (``plugins``, ``callbacks``) as a list."""
    if not value:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def first_config_overlay(args: list[str]) -> str | None:
    """The first ``--config`` file if it is an overlay (conf/README.md): a ``model`` or ``data`` section
    without ``class_path``, which only a base config given before it can complete; else None."""
    first = None
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            first = args[index + 1]
        elif arg.startswith("--config="):
            first = arg.split("=", 1)[1]
        if first is not None:
            break
    if first is None or not Path(first).is_file():
        return None
    try:
        content = yaml.safe_load(Path(first).read_text())
    except yaml.YAMLError:
        return None  # the parser names the file
    sections = [content.get(key) for key in ("model", "data")] if isinstance(content, dict) else []
    return first if any(isinstance(s, dict) and "class_path" not in s for s in sections) else None


class FwpArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors (unknown option, wrong type, missing config file) end in one
    line ``fwp: error: …`` and status 2, instead of the usage text and a message over several lines
    (``FWP_DEBUG=1``: jsonargparse's own output)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("FWP_DEBUG") == "1":
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        print(f"fwp: error: {one_line(message)} (options: {prog} --help)", file=sys.stderr)
        self.exit(2)


class FwpCLI(LightningCLI):
    """LightningCLI with the data→model links, TensorBoard by default, and clear user errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.add_lightning_class_args(NonFiniteLossGuard, "non_finite_loss")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(TaskThroughput, "throughput")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as usual. With a ``--ckpt_path`` file: check that it is a complete, uncorrupted
        Lightning checkpoint of the configured model class, then parse again with its saved model
        arguments as the defaults, so that the values the user gives win over them and the
        checkpoint's win over the class's defaults. ``fit`` from a checkpoint inside a version
        directory of the run's TensorBoard logger continues in that version (``resumed_version``). An
        overlay given as the first ``--config`` is refused, naming it (``first_config_overlay``)."""
        given = sys.argv[1:] if args is None else args
        overlay = first_config_overlay(list(given)) if isinstance(given, (list, tuple)) else None
        if overlay is not None:
            parser.error(
                f"--config {overlay} is an overlay (its model/data sections have no class_path): give it "
                "after a base config, e.g. --config conf/lm/wt103_small.yaml --config conf/lm/carry.yaml "
                "(every composition: conf/README.md)"
            )
        super().parse_arguments(parser, args)
        self.checkpoint_hparams: dict[str, Any] = {}
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not is_local_checkpoint_path(ckpt_path):
            return
        model_class = import_class(self.config[subcommand].model.class_path)
        self.checkpoint_hparams = with_nested_backbone(
            model_class, read_checkpoint_hyperparameters(ckpt_path)
        )
        if self.checkpoint_hparams:
            self.use_as_model_defaults(subcommand, ckpt_path, self.checkpoint_hparams)
            super().parse_arguments(parser, args)
        if subcommand == "fit":
            logger = self.config.fit.trainer.get("logger")
            version = resumed_version(logger, ckpt_path)
            if version is not None:
                logger.init_args.version = version

    def use_as_model_defaults(self, subcommand: str, ckpt_path: str, hparams: dict[str, Any]) -> None:
        """Make the checkpoint's model arguments the parser's defaults for ``subcommand``; the link
        targets (from the data) and arguments the class no longer takes are left out. A checkpoint of
        another model class than the configured one is a ``CheckpointMismatchError``."""
        chosen = self.config[subcommand].model.class_path
        saved = hparams.get("_class_path")
        if saved is not None and saved != chosen:
            raise CheckpointMismatchError(
                f"--ckpt_path {ckpt_path} holds a {saved} (another task?), but the configuration's "
                f"model is {chosen}"
            )
        model_class = import_class(chosen)
        accepted = inspect.signature(model_class).parameters
        linked = {target for _, target in DATA_TO_MODEL_LINKS}
        init_args = {key: value for key, value in hparams.items() if key in accepted and key not in linked}
        if isinstance(init_args.get("backbone"), dict):
            given = nested_value(self.config[subcommand].model.init_args, "backbone")
            init_args["backbone"] = backbone_defaults(model_class, init_args["backbone"], given)
        self._parser(subcommand).set_defaults({"model": {"class_path": chosen, "init_args": init_args}})

    def _parse_ckpt_path(self) -> None:
        """Nothing: ``parse_arguments`` has applied the checkpoint's arguments under the user's
        (LightningCLI's version would put them over the user's)."""

    def check_architecture(self, ckpt_path: str) -> None:
        """``CheckpointMismatchError`` naming every architecture argument the model was built with
        (given, from the checkpoint, or linked from the data, e.g. the vocabulary size) that differs from
        the checkpoint's."""
        conflicts = architecture_conflicts(self.model, dict(self.model.hparams), self.checkpoint_hparams)
        if conflicts:
            listed = "; ".join(
                f"{key}: given {given!r}, checkpoint {saved!r}" for key, given, saved in conflicts
            )
            raise CheckpointMismatchError(
                f"--ckpt_path {ckpt_path} was trained with another architecture than this run's: {listed} "
                f"(give the checkpoint's values or leave them out{run_config_hint(ckpt_path)})"
            )

    def instantiate_classes(self) -> None:
        """Instantiate as usual; a configuration mistake that surfaces only when a class is built
        (unknown attention name, missing data file) ends with its message instead of a deep trace
        (set ``FWP_DEBUG=1`` to see the trace)."""
        try:
            super().instantiate_classes()
        except (*USER_ERRORS, RuntimeError, MemoryError) as error:
            size = failed_allocation(error)
            if size is not None:
                exit_with_user_error(
                    MemoryError(f"out of memory building the model ({size} asked for); {self.model_sizes()}")
                )
            if not isinstance(error, USER_ERRORS):
                raise
            exit_with_user_error(reason_in_union(error))
        if self.checkpoint_hparams:
            self.check_architecture(self.config[self.config.subcommand].ckpt_path)

    def model_sizes(self) -> str:
        """``"its sizes: --model.init_args.backbone.d_model=…, …"``: the model's integer architecture
        arguments (``ARCHITECTURE_ARGUMENTS``; every integer argument of a model without it) as
        configured (a backbone with its preset applied, ``resolved_backbone``), then the ones the model
        takes from the data (``DATA_TO_MODEL_LINKS``; not known before it is built)."""
        model = self.config[self.config.subcommand].model
        model_class = import_class(model.class_path)
        linked = [
            target for _, target in DATA_TO_MODEL_LINKS if target in inspect.signature(model_class).parameters
        ]
        arguments = resolved_backbone(model_class, vars(model.init_args))
        values = {
            path: nested_value(arguments, path) for path in architecture_arguments(model_class, arguments)
        }
        sizes = [
            f"--model.init_args.{path}={value}"
            for path, value in sorted(values.items())
            if isinstance(value, int) and not isinstance(value, bool) and path not in linked
        ]
        return f"its sizes: {', '.join(sizes)} (and from the data: {', '.join(linked)})"

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand in version directories claimed for this run (``claim_version_directory``,
        by the process of global rank 0 (``NODE_RANK`` 0 too: a node's first process started by hand has
        local rank 0); the others learn the directory from it through the trainer);
        a claimed directory that the run leaves empty because it fails is removed again."""
        claimed = (
            [claim_version_directory(logger) for logger in self.trainer.loggers]
            if rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
            else []
        )
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            for directory in claimed:
                if directory is not None and not any(directory.iterdir()):
                    directory.rmdir()
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with ``AtomicCheckpointIO`` added to its plugins unless one is a CheckpointIO,
        and the progress bar on stderr (``StderrProgressBar``) unless the YAML turns it off or
        chooses one."""
        config = self._get(self.config_init, "trainer", default={})
        plugins = as_list(config.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        callbacks = as_list(config.get("callbacks"))
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(callback, ProgressBar) for callback in callbacks
        ):
            callbacks.append(StderrProgressBar())
        try:
            return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)
        except ModuleNotFoundError as missing:  # e.g. accelerator 'tpu' without torch_xla
            chosen = {key: config.get(key) for key in ("accelerator", "strategy", "precision")}
            raise MisconfigurationException(
                f"the trainer options {chosen} need a package that is not installed: {missing}"
            ) from missing


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
            parser_class=FwpArgumentParser,
            args=args,
            run=run,
        )
    except RUN_ERRORS as error:
        exit_with_user_error(error)
