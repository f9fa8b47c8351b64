"""Checkpoints that survive crashes and resume exactly.

- ``AtomicCheckpointIO``: a checkpoint file is either the complete old one or the complete new one.
  Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
  the system temp directory; when that is another file system than the checkpoint directory (node-local
  ``/tmp``, checkpoints on NFS/Lustre) the final move is a copy onto the target, and a crash during the
  copy truncates the previous checkpoint of that name (``last.ckpt``). Here the temporary file is
  written next to the target, flushed to disk and renamed over it (``os.replace``, atomic on POSIX).
  A file that is truncated, corrupted (CRC-32 of its zip members; ``torch.load`` alone loads flipped
  bits silently) or unreadable raises ``CheckpointLoadError`` naming it.
- ``LastCheckpointAtEnd`` / ``save_last_checkpoints``: ``last.ckpt`` (every ``ModelCheckpoint`` with
  ``save_last: true``) is the newest state of the run: written again when ``fit`` ends between two
  checkpoints (``max_steps``) and, by ``PreemptionCheckpoint``, when a signal stops it.
- ``read_checkpoint_hyperparameters``: what a ``--ckpt_path`` file says about the model it holds, after
  checking that it is a Lightning checkpoint at all (not a directory, not a plain ``torch.save`` file).
- ``RandomStateCheckpoint``: Lightning does not save random number generator states; this callback
  stores those of every rank (torch, CUDA, numpy, python) and restores them when training restarts,
  so anything random in the model (FAVOR+ redraws, dropout) continues as if never interrupted; it
  also keeps evaluations from consuming the training's random numbers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable
from typing import IO, Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

UNREADABLE_CHECKPOINT_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError)


class CheckpointLoadError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a checkpoint."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the run it is given to (another task's model, other architecture)."""


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s directory, flush it to disk, then rename
    it over ``path``. On any failure ``path`` is left as it was and the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    sync_directory(directory)


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_directory(directory: str) -> None:
    """Flush a directory entry (the rename) to disk where the file system supports it."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise ``CheckpointLoadError`` naming ``path`` unless it is a complete PyTorch (zip) checkpoint
    whose members all match their CRC-32: catches truncated and corrupted files before anything
    reads them (reads the file once, unpickles nothing)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointLoadError(
            f"cannot load checkpoint '{path}': truncated, corrupt or not a PyTorch checkpoint ({error})"
        ) from error
    if damaged is not None:
        raise CheckpointLoadError(f"cannot load checkpoint '{path}': corrupt (CRC mismatch in {damaged})")


def save_last_checkpoints(trainer: L.Trainer) -> None:
    """Make every ``ModelCheckpoint`` with ``save_last=True`` write its last checkpoint (``last.ckpt``)
    now, unless it has written one at this global step (or saves nothing now: ``fast_dev_run``, not
    fitting). Lightning saves the last checkpoint only together with a top-k one (at an evaluation or
    every ``n`` steps), so the steps after the latest were in no checkpoint. Collective under a
    distributed strategy (call it on every rank). Uses ``ModelCheckpoint`` internals (Lightning 2.6)."""
    for callback in trainer.checkpoint_callbacks:
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.save_last is True
            and not callback._should_skip_saving_checkpoint(trainer)
        ):
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


class LastCheckpointAtEnd(L.Callback):
    """At the end of ``fit``, ``last.ckpt`` holds the final state (``save_last_checkpoints``), also when
    training stopped between two checkpoints (``max_steps``, ``max_time``, ...)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_last_checkpoints(trainer)


def read_checkpoint_hyperparameters(path: str | os.PathLike) -> dict[str, Any]:
    """The ``hyper_parameters`` of the Lightning checkpoint ``path`` (the model's ``__init__`` arguments,
    with ``_class_path`` when the project's CLI built the model; empty if none were saved).

    Raises ``CheckpointLoadError`` naming ``path`` if it is missing, a directory, truncated or corrupt
    (``verify_checkpoint_file``), or not a Lightning checkpoint (a plain ``torch.save`` file: no
    ``state_dict``). The weights are memory-mapped, not read."""
    if not os.path.exists(path):
        raise CheckpointLoadError(f"checkpoint file not found: '{path}'")
    if os.path.isdir(path):
        raise CheckpointLoadError(f"checkpoint '{path}' is a directory; give a .ckpt file in it")
    verify_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        raise CheckpointLoadError(
            f"cannot load checkpoint '{path}' (not a Lightning checkpoint?): {type(error).__name__}: {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointLoadError(
            f"'{path}' is not a Lightning checkpoint (no 'state_dict' entry; a plain torch.save file?): "
            "give a .ckpt file written by fit"
        )
    return dict(checkpoint.get("hyper_parameters") or {})


def storage_on_cpu(storage: Any, location: str) -> Any:
    """``map_location`` that leaves every tensor on the CPU (Lightning's default)."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes; local files are verified (``verify_checkpoint_file``)
    before loading, and load errors name the file.

    Remote paths (``s3://``, ...) keep Lightning's fsspec transaction."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomically(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(
        self, path: _PATH, map_location: Any = storage_on_cpu, weights_only: bool | None = None
    ) -> dict:
        if isinstance(get_filesystem(path), LocalFileSystem) and os.path.isfile(path):
            verify_checkpoint_file(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError as error:
            raise CheckpointLoadError(f"checkpoint file not found: '{path}'") from error
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            raise CheckpointLoadError(
                f"cannot load checkpoint '{path}' (truncated, corrupt or not a checkpoint?): "
                f"{type(error).__name__}: {error}"
            ) from error


def capture_random_states() -> dict[str, Any]:
    """The states of torch's CPU (and CUDA) generators, numpy's and python's global generators, as
    tensors and plain python values (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Inverse of ``capture_random_states``."""
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStateCheckpoint(L.Callback):
    """Saves every rank's random number generator states in checkpoints, restores them when training
    resumes from one, and keeps evaluation off the training's random stream.

    - Saving gathers the states of all ranks (Lightning's ``save_checkpoint`` is collective). They are
      restored at the start of the first training batch after resuming: after its data has been
      fetched, because a data loader draws a seed from the global generator when it starts an iterator,
      which a resumed run does at a point where the uninterrupted one did not. With another world size
      than at saving, rank ``r`` takes rank ``r mod W_saved``'s states, with a warning.
    - Evaluations during fitting (sanity check included) do not consume the training's random numbers:
      the states taken at the end of every training batch (and before the sanity check) are put back at
      the end of each evaluation, undoing its draws (the evaluation loader's seed, FAVOR+ redraws,
      ...). So training does not depend on whether or how often it evaluates, and every mid-epoch
      checkpoint is exact: Lightning, resuming from a checkpoint taken at the end of a training batch
      that was followed by an evaluation, does not repeat that evaluation. Cost: one copy of the states
      (a few kB) per training batch.
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None
        self._training_states: dict[str, Any] | None = None
        self._evaluating = False

    def state_dict(self) -> dict[str, Any]:
        if self._to_restore is not None:  # resumed, not restored yet: these are still the run's states
            return {"ranks": self._to_restore}
        states = self._training_states if self._evaluating else capture_random_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            return {"ranks": gathered}
        return {"ranks": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict["ranks"]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if self._to_restore is None:
            return
        saved = len(self._to_restore)
        if saved != trainer.world_size:
            rank_zero_warn(
                f"RandomStateCheckpoint: the checkpoint holds the random states of {saved} ranks, this run "
                f"has {trainer.world_size}; rank r continues rank (r mod {saved})'s generators"
            )
        restore_random_states(self._to_restore[trainer.global_rank % saved])
        self._to_restore = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self._training_states = capture_random_states()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_states = capture_random_states()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluating = trainer.state.fn == TrainerFn.FITTING and self._training_states is not None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._evaluating:
            restore_random_states(self._training_states)
        self._evaluating = False
