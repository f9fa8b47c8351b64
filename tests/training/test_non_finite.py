"""A NaN loss stops training with an error naming the step and checkpoint, or skips the batch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from cli_runs import ParameterRecorder, PoisonLoss, build, fit, retrieval_args

from fwp.training.callbacks import NonFiniteLossGuard


def run(tmp_path, *options: str, poison: set[int] | range, steps: int = 4):
    recorder = ParameterRecorder()
    args = ["--trainer.max_steps", str(steps), "--trainer.logger.init_args.save_dir", str(tmp_path), *options]
    cli = build(retrieval_args("setting1_delta", *args), PoisonLoss(poison), recorder)
    return cli, recorder


def test_stop_names_the_step_and_checkpoint_and_keeps_the_weights_finite(tmp_path):
    cli, recorder = run(tmp_path, poison={2})
    with pytest.raises(FloatingPointError, match=r"global step 2 .*last good checkpoint: none written yet"):
        fit(cli)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    assert sorted(recorder.after) == [1, 2]


def test_skip_leaves_parameters_and_optimizer_state_unchanged(tmp_path):
    cli, recorder = run(tmp_path, "--non_finite_loss.policy", "skip", poison={2})
    trainer = fit(cli)
    assert trainer.global_step == 4
    for name, value in recorder.after[2].items():
        assert torch.equal(recorder.after[3][name], value), f"{name} changed at the skipped step"
        assert not torch.equal(recorder.after[4][name], value), f"{name} did not train after the skip"
    adam = trainer.optimizers[0]
    assert {int(state["step"]) for state in adam.state.values()} == {3}
    (guard,) = [c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)]
    assert guard.skipped_batches == 1
    assert float(trainer.callback_metrics["train/skipped_batches"]) == 1


def test_skip_gives_up_after_too_many_consecutive_skips(tmp_path):
    options = ["--non_finite_loss.policy", "skip", "--non_finite_loss.max_consecutive_skips", "3"]
    cli, _ = run(tmp_path, *options, poison=range(1, 100), steps=10)
    with pytest.raises(FloatingPointError, match=r"3 batches in a row\) at global step 3"):
        fit(cli)


def test_bad_policy_is_named(capsys):
    with pytest.raises(SystemExit):
        build(retrieval_args("setting1_delta", "--non_finite_loss.policy", "ignore"))
    assert "ignore" in capsys.readouterr().err


class PoisonGradient(L.Callback):
    """Makes one gradient entry infinite after the backward pass at the given global steps (the loss
    stays finite)."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


def test_a_non_finite_gradient_after_a_finite_loss_stops_or_is_skipped(tmp_path):
    args = ["--trainer.max_steps", "4", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = build(retrieval_args("setting1_delta", *args), PoisonGradient({2}))
    with pytest.raises(FloatingPointError, match=r"non-finite gradient after a finite loss at global step 2"):
        fit(cli)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())

    recorder = ParameterRecorder()
    skip = ["--non_finite_loss.policy", "skip", "--trainer.logger.init_args.save_dir", str(tmp_path / "s")]
    cli = build(retrieval_args("setting1_delta", *args[:2], *skip), PoisonGradient({2}), recorder)
    trainer = fit(cli)
    assert trainer.global_step == 4
    for name, value in recorder.after[2].items():
        assert torch.equal(recorder.after[3][name], value), f"{name} changed at the skipped step"
    (guard,) = [c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)]
    assert guard.skipped_batches == 1
