"""``last.ckpt`` is always the newest state of its run.

Bugs caught: (1) ``fit`` ending by ``max_steps`` between two checkpoints left the final steps in no
checkpoint (Lightning writes ``last.ckpt`` only together with a top-k checkpoint); (2) a run stopped by
a signal before its first checkpoint wrote ``preempted.ckpt`` recording no last checkpoint, then
``last.ckpt`` (at the end of training): resumed from ``preempted.ckpt`` it did not recognise that file
as its own and wrote ``last-v1.ckpt`` next to it, so ``--ckpt_path …/last.ckpt`` gave the preempted
model."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch

from fwp.training.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf"


def retrieval_fit(runs: Path, max_steps: int) -> list[str]:
    """A tiny retrieval ``fit`` evaluating (and checkpointing, with ``last.ckpt``) every 4 steps."""
    return [
        "fit",
        "--config", str(CONF / "retrieval" / "setting1.yaml"),
        "--data.init_args.num_keys", "5",
        "--data.init_args.batch_size", "4",
        "--trainer.max_steps", str(max_steps),
        "--trainer.val_check_interval", "4",
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["global_step"]


class SignalAt(L.Callback):
    """Sends this process SIGTERM during training step ``step`` (as ``kill`` or a scheduler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_fit_ending_between_checkpoints_leaves_the_final_state_in_last_ckpt(tmp_path):
    cli = main(retrieval_fit(tmp_path / "runs", max_steps=6))
    checkpoints = Path(cli.trainer.logger.log_dir) / "checkpoints"
    assert cli.trainer.global_step == 6
    assert step_of(checkpoints / "last.ckpt") == 6
    parameters = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in cli.model.state_dict().items():
        assert torch.equal(parameters[name], value), name


def test_resuming_from_a_preemption_checkpoint_keeps_writing_last_ckpt(tmp_path, monkeypatch):
    """Preempted at step 3, before the first checkpoint (step 4); resumed to step 6 (evaluation at 4)."""
    monkeypatch.setattr("fwp.training.cli.trainer_defaults", with_callback(SignalAt(3)))
    first = main(retrieval_fit(tmp_path / "runs", max_steps=100))
    monkeypatch.undo()
    checkpoints = Path(first.trainer.logger.log_dir) / "checkpoints"
    assert step_of(checkpoints / "preempted.ckpt") == 3
    assert step_of(checkpoints / "last.ckpt") == 3

    resumed = main(
        [*retrieval_fit(tmp_path / "runs", max_steps=6), "--ckpt_path", str(checkpoints / "preempted.ckpt")]
    )
    assert Path(resumed.trainer.logger.log_dir) / "checkpoints" == checkpoints
    assert resumed.trainer.global_step == 6
    assert sorted(path.name for path in checkpoints.glob("last*")) == ["last.ckpt"]
    assert step_of(checkpoints / "last.ckpt") == 6


def with_callback(callback: L.Callback):
    """``fwp.training.cli.trainer_defaults`` with ``callback`` among the always-on callbacks."""
    from fwp.training.cli import trainer_defaults

    def defaults():
        settings = trainer_defaults()
        settings["callbacks"] = [*settings["callbacks"], callback]
        return settings

    return defaults
