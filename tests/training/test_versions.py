"""Runs started together get a ``version_<n>`` directory each.

Bug caught: Lightning's TensorBoard and CSV loggers pick their version by listing ``<save_dir>/<name>``
and taking the next number, lazily, without creating it; two runs started at the same time took the
same number and wrote into one directory (``config.yaml``, ``hparams.yaml``, event files and checkpoints
mixed). The CLI now claims the directory with an exclusive ``mkdir`` before the run starts."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from fwp.training.cli import main
from fwp.training.run_directories import claim_version_directory

CONF = Path(__file__).resolve().parents[2] / "conf"
LOGGERS = {"tensorboard": TensorBoardLogger, "csv": CSVLogger}
PROCESSES = 6
ROUNDS = 4


def start_together_and_claim(kind: str, save_dir: str, barrier, versions) -> None:
    """One run's start: its logger is built, all processes are released at once, the version is
    claimed, and the run marks its directory as its own."""
    logger = LOGGERS[kind](save_dir, name="runs")
    barrier.wait()
    claim_version_directory(logger)
    (Path(logger.log_dir) / f"run-{os.getpid()}").touch()
    versions.put(logger.version)


@pytest.mark.parametrize("kind", list(LOGGERS))
def test_runs_started_at_the_same_instant_get_distinct_versions(kind, tmp_path):
    context = multiprocessing.get_context("fork")
    versions = context.Queue()
    for _ in range(ROUNDS):
        barrier = context.Barrier(PROCESSES)
        processes = [
            context.Process(target=start_together_and_claim, args=(kind, str(tmp_path), barrier, versions))
            for _ in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    claimed = sorted(versions.get(timeout=10) for _ in range(PROCESSES * ROUNDS))
    assert claimed == list(range(PROCESSES * ROUNDS))
    for directory in (tmp_path / "runs").iterdir():
        assert len(list(directory.glob("run-*"))) == 1, f"{directory.name} shared by several runs"


def test_the_cli_run_does_not_enter_a_version_another_run_just_created(tmp_path, monkeypatch):
    """The race made deterministic: the logger listed ``runs/retrieval`` before another run created
    ``version_0`` (Lightning's listing and ours both still say "empty"); the run must take version_1
    and leave version_0 as the other run left it."""
    other = tmp_path / "runs" / "retrieval" / "version_0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("the other run's\n")
    monkeypatch.setattr(TensorBoardLogger, "_get_next_version", lambda self: 0)
    monkeypatch.setattr("fwp.training.run_directories.existing_versions", lambda root: [])
    arguments = [
        "fit",
        "--config", str(CONF / "retrieval" / "setting1.yaml"),
        "--data.init_args.num_keys", "5",
        "--trainer.max_steps", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    cli = main(arguments)
    assert Path(cli.trainer.logger.log_dir).name == "version_1"
    assert sorted(path.name for path in other.iterdir()) == ["config.yaml"]
    assert (other / "config.yaml").read_text() == "the other run's\n"
