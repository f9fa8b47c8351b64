"""Gradient accumulation and clipping set in the trainer section of the YAML (or on the command line)
act on the task modules as stated."""

from __future__ import annotations

import lightning as L
import torch
from cli_runs import ParameterRecorder, build, fit, retrieval_args

from tasks.retrieval.data import TrainingBatches
from tasks.retrieval.module import squared_error

NO_LOGGER = ["--trainer.logger", "false"]


def test_accumulating_two_batches_equals_one_step_on_their_mean_loss(tmp_path):
    options = [
        "--trainer.max_steps",
        "2",
        "--trainer.accumulate_grad_batches",
        "2",
        "--trainer.logger",
        "false",
    ]
    recorder = ParameterRecorder()
    cli = build(retrieval_args("setting1_delta", *options), recorder)
    reference = build(retrieval_args("setting1_delta", *NO_LOGGER)).model.double()
    trainer = fit(cli)
    assert (trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.total.completed) == (2, 4)

    optimizer = torch.optim.Adam(reference.parameters(), lr=reference.hparams.lr)
    batches = TrainingBatches(num_keys=5, setting=1, batch_size=4, num_batches=4, seed=0, rank=0)
    for step in range(2):
        optimizer.zero_grad()
        for micro in range(2):
            batch = batches[2 * step + micro]
            output, _ = reference(batch.keys, batch.values, batch.queries)
            (squared_error(output, batch.targets, batch.query_mask) / 2).backward()
        optimizer.step()
    for name, value in reference.named_parameters():
        torch.testing.assert_close(recorder.after[2][name].double(), value, rtol=1e-4, atol=1e-6, msg=name)


class GradientNorms(L.Callback):
    """Total gradient norm before clipping (``on_before_optimizer_step``) and when the optimizer steps."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.at_step: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.at_step.append(self.norm(pl_module)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(self.norm(pl_module))

    @staticmethod
    def norm(module) -> float:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])))


def test_gradient_clipping_by_norm_from_the_config(tmp_path):
    norms = GradientNorms()
    clip = ["--trainer.gradient_clip_val", "0.01", "--trainer.gradient_clip_algorithm", "norm"]
    fit(
        build(
            retrieval_args("setting1_delta", "--trainer.max_steps", "3", "--trainer.logger", "false", *clip),
            norms,
        )
    )
    assert len(norms.at_step) == 3
    assert all(before > 0.01 for before in norms.before)
    assert all(abs(after - 0.01) < 1e-6 for after in norms.at_step)
