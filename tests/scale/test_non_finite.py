"""A NaN loss stops training with an error naming the step and checkpoint, or skips the batch."""

from __future__ import annotations

import pytest
import torch
from scale_runs import ParameterRecorder, PoisonLoss, build, fit, retrieval_args

from fwp.callbacks import NonFiniteLossGuard


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
