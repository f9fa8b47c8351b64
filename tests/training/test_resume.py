"""Resuming from a mid-epoch checkpoint continues exactly as the uninterrupted run: same losses, same
parameters, bit for bit (CPU, fixed seed). Checkpoints are taken at the end of training batches (with
and without an evaluation following) and at the end of evaluations.

The random parts are exercised: the retrieval model with FAVOR+ redraws its random features from the
global generator at every call (training and evaluation), the language models use dropout. The carry
language model (delta rule) continues its fast weights from segment to segment, so its checkpoints
must hold the carried state too."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_runs import LossRecorder, build, checkpoints_every, fit, lm_args, retrieval_args

from fwp.training.cli import main
from tasks.language_modeling.synthetic import write_synthetic_corpus

STEPS = 6
CHECKPOINTS = ["train-step=3.ckpt", "train-step=4.ckpt", "eval-step=4.ckpt"]


def run_options(directory) -> list[str]:
    """Six steps with an evaluation every second one."""
    return [
        "--trainer.max_steps",
        str(STEPS),
        "--trainer.val_check_interval",
        "2",
        "--trainer.logger.init_args.save_dir",
        str(directory / "runs"),
    ]


def retrieval(directory) -> list[str]:
    return retrieval_args("setting1_favor64", *run_options(directory))


def language_model(directory, config: str = "lm_synthetic_softmax") -> list[str]:
    corpus = directory.parent / "corpus"
    if not corpus.exists():
        write_synthetic_corpus(corpus, train_lines=200, valid_lines=20, test_lines=1)
    return lm_args(
        config,
        corpus,
        "--trainer.limit_val_batches",
        "2",
        "--model.init_args.backbone.dropout",
        "0.1",
        *run_options(directory),
    )


TASKS = {
    "retrieval_favor": retrieval,
    "lm_dropout": language_model,
    "lm_carry": partial(language_model, config="lm_synthetic_delta"),
}


@pytest.fixture(scope="module", params=list(TASKS))
def uninterrupted(request, tmp_path_factory):
    """The uninterrupted run: its arguments, losses, final parameters; every checkpoint kept."""
    arguments = TASKS[request.param]
    directory = tmp_path_factory.mktemp(request.param) / "uninterrupted"
    recorder = LossRecorder()
    cli = build(
        arguments(directory),
        recorder,
        checkpoints_every(directory / "ckpt", steps=1, prefix="train-"),
        checkpoints_every(directory / "ckpt", prefix="eval-"),
    )
    fit(cli)
    final = {name: value.clone() for name, value in cli.model.state_dict().items()}
    return arguments, directory, recorder.losses, final


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_resume_continues_exactly(uninterrupted, checkpoint):
    arguments, directory, losses, final = uninterrupted
    recorder = LossRecorder()
    cli = build(arguments(directory.parent / f"resumed-{checkpoint}"), recorder)
    trainer = fit(cli, ckpt_path=directory / "ckpt" / checkpoint)
    resumed_from = int(checkpoint.split("=")[1].split(".")[0])
    assert trainer.global_step == STEPS
    assert sorted(recorder.losses) == list(range(resumed_from + 1, STEPS + 1))
    for step, loss in recorder.losses.items():
        assert loss == losses[step], f"step {step}: resumed loss {loss} != uninterrupted {losses[step]}"
    for name, value in cli.model.state_dict().items():
        assert torch.equal(value, final[name]), name


class BatchRecorder(L.Callback):
    """``(epoch, first token)`` of every training batch, by global step."""

    def __init__(self) -> None:
        self.batches: dict[int, tuple[int, int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches[trainer.global_step] = (trainer.current_epoch, int(batch["input"][0, 0]))


def test_resume_at_the_end_of_an_epoch_starts_the_next_one(tmp_path):
    """A checkpoint taken at an epoch's last batch (6 an epoch here) resumes with the first batch of
    the next epoch, counted as that epoch: the same batches, losses and epochs as without a break."""
    corpus = write_synthetic_corpus(tmp_path / "corpus", train_lines=4, valid_lines=20, test_lines=1)

    def run(name: str, ckpt_path=None, *callbacks):
        options = ["--trainer.max_steps", "8", "--trainer.limit_val_batches", "1"]
        options += ["--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1"]
        options += ["--trainer.logger.init_args.save_dir", str(tmp_path / name)]
        losses, batches = LossRecorder(), BatchRecorder()
        cli = build(lm_args("lm_synthetic_softmax", corpus, *options), losses, batches, *callbacks)
        trainer = fit(cli, ckpt_path)
        return trainer, losses.losses, batches.batches

    trainer, losses, batches = run("uninterrupted", None, checkpoints_every(tmp_path / "ckpt", steps=1))
    resumed_trainer, resumed_losses, resumed_batches = run("resumed", tmp_path / "ckpt" / "step=6.ckpt")
    assert batches[6] == (1, batches[0][1]) and batches[5][0] == 0  # step 6 opens epoch 1 with batch 0
    assert resumed_batches == {step: batches[step] for step in (6, 7)}
    assert resumed_losses == {step: losses[step] for step in (7, 8)}
    assert resumed_trainer.current_epoch == trainer.current_epoch


def test_fit_from_a_checkpoint_of_a_version_continues_in_that_version(tmp_path):
    """``--ckpt_path runs/<name>/version_0/checkpoints/...``: the resumed run logs and checkpoints into
    ``version_0`` again (ModelCheckpoint keeps its best/top-k tracking), not into a new ``version_1``."""
    runs = tmp_path / "runs"
    options = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.val_check_interval", "2"]
    first = main(["fit", *retrieval_args("setting1_delta", *options, "--trainer.max_steps", "2")])
    version_dir = Path(first.trainer.logger.log_dir)
    checkpoint = next((version_dir / "checkpoints").glob("*.ckpt"))
    resumed = main(
        [
            "fit",
            *retrieval_args("setting1_delta", *options, "--trainer.max_steps", "4"),
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    assert resumed.trainer.global_step == 4
    assert Path(resumed.trainer.logger.log_dir) == version_dir
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [version_dir.name]
