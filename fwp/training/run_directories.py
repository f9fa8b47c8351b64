"""Where a run writes: its logger's ``version_<n>`` directory, claimed atomically so that two runs
started together never share one, and the version directory a resumed run continues in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


class RunDirectoryError(ValueError):
    """The directory a logger writes the run into cannot be created."""


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


def existing_versions(root: Path) -> list[int]:
    """The numbers ``n`` of the ``version_<n>`` directories in ``root``."""
    if not root.is_dir():
        return []
    names = (path.name for path in root.iterdir() if path.is_dir())
    return [int(name[8:]) for name in names if name.startswith("version_") and name[8:].isdigit()]


def claim_version_directory(logger: Logger) -> Path | None:
    """Give a TensorBoard or CSV logger without a version of its own the next ``version_<n>`` of its
    ``<save_dir>/<name>`` (after the highest existing one, as Lightning numbers them), claimed by
    creating that directory: ``mkdir`` fails if another run has just created it (two runs started
    together; Lightning only lists the directory, so both took the same number), and the next number is
    tried. Returns the directory created; None for other loggers, a given version, a remote path."""
    if not isinstance(logger, TensorBoardLogger | CSVLogger) or logger._version is not None:
        return None
    if "://" in str(logger.root_dir):
        return None
    root = Path(logger.root_dir)
    number = max(existing_versions(root), default=-1) + 1
    while True:
        directory = root / f"version_{number}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            directory.mkdir()
        except FileExistsError:
            if not root.is_dir():
                raise RunDirectoryError(cannot_create(directory, f"{root} is not a directory")) from None
            number += 1
            continue
        except OSError as error:
            reason = f"{error.filename}: {error.strerror}" if error.filename else str(error)
            raise RunDirectoryError(cannot_create(directory, reason)) from error
        logger._version = number
        return directory


def cannot_create(directory: Path, reason: str) -> str:
    """The message of a run directory that cannot be created."""
    return (
        f"cannot create the run directory {directory} (the logger's save_dir and name, e.g. "
        f"--trainer.logger.init_args.save_dir): {reason}"
    )
