"""The project's LightningCLI: task model and data module chosen by ``class_path`` in YAML.

Sizes that come from the data are linked into the model at instantiation; a link applies only when
both the chosen data module and the chosen model have the named attribute/argument.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from fwp.callbacks import LearningRateLogger, NonFiniteLossGuard, RunDirectoryReport

DATA_TO_MODEL_LINKS = (
    ("num_keys", "num_keys"),
    ("vocab_size", "vocab_size"),
    ("pad_id", "pad_id"),
)

USER_ERRORS = (ValueError, FileNotFoundError, TypeError)


def trainer_defaults() -> dict[str, Any]:
    """TensorBoard as the default logger; the always-on callbacks are added to any the YAML lists."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "fwp"},
        },
        "callbacks": [NonFiniteLossGuard(), RunDirectoryReport(), LearningRateLogger()],
    }


class FwpCLI(LightningCLI):
    """LightningCLI with the data→model links, TensorBoard by default, and clear user errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        """Instantiate as usual; a configuration mistake that surfaces only when a class is built
        (unknown attention name, missing data file) ends with its message instead of a deep trace
        (set ``FWP_DEBUG=1`` to see the trace)."""
        try:
            super().instantiate_classes()
        except USER_ERRORS as error:
            if os.environ.get("FWP_DEBUG") == "1":
                raise
            print(f"fwp: error: {type(error).__name__}: {error}", file=sys.stderr)
            raise SystemExit(2) from error


def main(args: ArgsType = None, run: bool = True) -> FwpCLI:
    """Entry point of ``python cli.py {fit,validate,test,predict} --config conf/....yaml``."""
    import lightning as L

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
