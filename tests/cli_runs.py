"""Small retrieval and language-model runs through the project CLI, shared by the run-time tests
(``tests/training``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from fwp.training.cli import FwpCLI, main
from tasks.language_modeling.synthetic import write_synthetic_corpus
from tasks.translation.synthetic import write_synthetic_parallel_corpus
from tests.experiments import experiment_arguments

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def retrieval_args(
    config: str = "setting1_delta", *extra: str, num_keys: int = 5, batch_size: int = 4
) -> list[str]:
    """CLI arguments of a tiny retrieval run of the experiment ``config`` of conf/README.md (S keys,
    small batches, quiet)."""
    return [
        *experiment_arguments(config),
        "--data.init_args.num_keys",
        str(num_keys),
        "--data.init_args.batch_size",
        str(batch_size),
        "--seed_everything",
        "7",
        *QUIET,
        *extra,
    ]


def lm_args(
    config: str, corpus: str | Path, *extra: str, batch_size: int = 4, segment_length: int = 16
) -> list[str]:
    """CLI arguments of a small language-model run of the experiment ``config`` of conf/README.md (e.g.
    ``lm_synthetic_delta``) on the corpus directory ``corpus`` (batches of ``batch_size`` columns ×
    ``segment_length`` tokens, quiet)."""
    return [
        *experiment_arguments(config),
        "--data.init_args.data_dir",
        str(corpus),
        "--data.init_args.batch_size",
        str(batch_size),
        "--data.init_args.segment_length",
        str(segment_length),
        *QUIET,
        *extra,
    ]


def build(args: list[str], *callbacks: L.Callback) -> FwpCLI:
    """The CLI's model, data and trainer for ``args`` (no subcommand run), with extra callbacks."""
    cli = main(args, run=False)
    cli.trainer.callbacks.extend(callbacks)
    return cli


def fit(cli: FwpCLI, ckpt_path: str | Path | None = None) -> L.Trainer:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli.trainer


class LossRecorder(L.Callback):
    """The training loss of every global step: ``losses[step]`` (step counted after the update)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


def checkpoints_every(dirpath: Path, steps: int | None = None, prefix: str = "") -> L.Callback:
    """Keeps every checkpoint: one every ``steps`` training steps (taken at the end of the training
    batch) or, with ``steps=None``, one at the end of every validation."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if steps is None:
        return ModelCheckpoint(dirpath, prefix + "{step}", save_top_k=-1, save_on_train_epoch_end=False)
    return ModelCheckpoint(dirpath, prefix + "{step}", save_top_k=-1, every_n_train_steps=steps)


def parameters(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def cli_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``python cli.py <args>`` in a fresh process, one thread per process."""
    return [sys.executable, str(REPO / "cli.py"), *args], {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli_process(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python cli.py <args>`` run to its end, output captured."""
    command, environment = cli_command(args)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


class PoisonLoss(L.Callback):
    """Makes the retrieval model's output (hence its loss) NaN at the given global steps."""

    def __init__(self, steps: set[int] | range) -> None:
        self.steps = steps
        self.active = False

    def on_fit_start(self, trainer, pl_module) -> None:
        def poison(module, inputs, output):
            return output * float("nan") if self.active else output

        pl_module.query_projection.register_forward_hook(poison)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.active = trainer.global_step in self.steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.active = False


class ParameterRecorder(L.Callback):
    """A copy of every parameter after each optimizer step: ``after[step]``."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def task_args(task: str, tmp_path: Path) -> list[str]:
    """CLI arguments of a tiny run of ``task`` (small data written under ``tmp_path``)."""
    if task == "retrieval":
        data = ["--data.init_args.num_keys", "5", "--data.init_args.batch_size", "4"]
        return ["--config", str(REPO / "conf/retrieval/setting1.yaml"), *data]
    if task == "language_modeling":
        corpus = write_synthetic_corpus(tmp_path / "lm", train_lines=60, valid_lines=12, test_lines=12)
        data = ["--data.init_args.data_dir", str(corpus), "--data.init_args.batch_size", "4"]
        sizes = ["--data.init_args.segment_length", "16", "--model.init_args.max_new_tokens", "5"]
        return ["--config", str(REPO / "conf/lm/synthetic.yaml"), *data, *sizes]
    corpus = write_synthetic_parallel_corpus(tmp_path / "mt", n_train=300, n_valid=20, n_test=12)
    data = ["--data.init_args.data_dir", str(corpus), "--data.init_args.bpe_vocab_size", "300"]
    return ["--config", str(REPO / "conf/mt/synthetic.yaml"), *data, "--model.init_args.beam_size", "1"]
