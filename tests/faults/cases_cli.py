"""Checkpoint and command-line faults: what ``--ckpt_path`` is given (not a checkpoint, a directory, a
missing or truncated file, another task's checkpoint, one of another architecture), options the parser
refuses, a model too large to allocate, a run directory that cannot be created. The checkpoints are
written here by hand (a Lightning checkpoint is a ``torch.save`` of a dict with ``state_dict`` and
``hyper_parameters``): the faults are found before any weight is loaded, so no training is needed."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.faults.cases_data import config
from tests.faults.cli_run import Fault

RETRIEVAL = ["--config", "conf/retrieval/setting1.yaml", "--data.init_args.num_keys", "5"]
FAST = ["--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false"]
RETRIEVAL_HPARAMS = {
    "_class_path": "tasks.retrieval.module.RetrievalModel",
    "num_keys": 5,
    "attention": {"name": "delta", "nu": 2},
    "d_key": 32,
    "lr": 0.001,
}


def retrieval(subcommand: str, *extra: str) -> list[str]:
    return [*config([subcommand, *RETRIEVAL]), *FAST, *extra]


def checkpoint(tmp_path: Path, hyper_parameters: dict, name: str = "model.ckpt") -> Path:
    """A Lightning-format checkpoint holding no weights, only ``hyper_parameters``."""
    path = tmp_path / name
    torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters, "global_step": 0}, path)
    return path


def plain_torch_save(tmp_path: Path) -> list[str]:
    torch.save({"weight": torch.zeros(3)}, tmp_path / "weights.pt")
    return retrieval("test", "--ckpt_path", str(tmp_path / "weights.pt"))


def truncated(tmp_path: Path) -> list[str]:
    whole = checkpoint(tmp_path, RETRIEVAL_HPARAMS, "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    return retrieval("test", "--ckpt_path", str(tmp_path / "truncated.ckpt"))


def directory(tmp_path: Path) -> list[str]:
    (tmp_path / "checkpoints").mkdir()
    return retrieval("test", "--ckpt_path", str(tmp_path / "checkpoints"))


def other_task(tmp_path: Path) -> list[str]:
    path = checkpoint(
        tmp_path, {"_class_path": "tasks.language_modeling.module.LanguageModel", "vocab_size": 9}
    )
    return retrieval("test", "--ckpt_path", str(path))


def other_architecture(tmp_path: Path) -> list[str]:
    """The config says d_key 64, the data 7 keys; the checkpoint was trained with 32 and 5."""
    path = checkpoint(tmp_path, RETRIEVAL_HPARAMS)
    return retrieval("validate", "--data.init_args.num_keys", "7", "--ckpt_path", str(path))


def save_dir_is_a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "runs").write_text("not a directory\n")
    return retrieval("fit", "--trainer.fast_dev_run", "false", "--trainer.max_steps", "1")


CASES: list[Fault] = [
    Fault(  # conf/README.md: an overlay completes a base config given before it
        "config-overlay-given-alone",
        lambda t: config(["fit", "--config", "conf/lm/carry.yaml", *FAST]),
        lambda t: ["conf/lm/carry.yaml", "is an overlay", "after a base config"],
    ),
    Fault(
        "ckpt-plain-torch-save-file",
        plain_torch_save,
        lambda t: ["CheckpointLoadError", t / "weights.pt", "not a Lightning checkpoint"],
    ),
    Fault(
        "ckpt-truncated",
        truncated,
        lambda t: ["CheckpointLoadError", t / "truncated.ckpt"],
    ),
    Fault(
        "ckpt-directory",
        directory,
        lambda t: ["CheckpointLoadError", t / "checkpoints", "directory"],
    ),
    Fault(
        "ckpt-missing-leaves-no-version-directory",
        lambda t: retrieval("fit", "--ckpt_path", str(t / "nowhere.ckpt")),
        lambda t: ["CheckpointLoadError", t / "nowhere.ckpt"],
        expect_no_files=lambda t: [t / "runs"],
    ),
    Fault(
        "ckpt-of-another-task",
        other_task,
        lambda t: [
            "CheckpointMismatchError",
            t / "model.ckpt",
            "tasks.language_modeling.module.LanguageModel",
            "tasks.retrieval.module.RetrievalModel",
        ],
        expect_no_files=lambda t: [t / "runs"],
    ),
    Fault(
        "ckpt-of-another-architecture",
        other_architecture,
        lambda t: [
            "CheckpointMismatchError",
            "d_key: given 64, checkpoint 32",
            "num_keys: given 7, checkpoint 5",
        ],
        expect_no_files=lambda t: [t / "runs"],
    ),
    Fault(
        "model-too-large-to-allocate",
        lambda t: retrieval("fit", "--model.init_args.d_key", str(10**14)),
        lambda t: ["MemoryError", "out of memory", f"--model.init_args.d_key={10**14}"],
    ),
    Fault(
        "unknown-option",
        lambda t: retrieval("fit", "--model.init_args.beam_size", "4"),
        lambda t: ["beam_size", "not accepted"],
    ),
    Fault(
        "config-file-missing",
        lambda t: ["fit", "--config", str(t / "nowhere.yaml")],
        lambda t: [t / "nowhere.yaml"],
    ),
    Fault(
        "accelerator-this-machine-lacks",
        lambda t: retrieval("fit", "--trainer.accelerator", "mps" if torch.cuda.is_available() else "gpu"),
        lambda t: ["MisconfigurationException"],
    ),
    Fault(
        "accelerator-whose-package-is-missing",
        lambda t: retrieval("fit", "--trainer.accelerator", "tpu"),
        lambda t: ["MisconfigurationException", "'accelerator': 'tpu'", "torch_xla"],
    ),
    Fault(
        "run-directory-cannot-be-created",
        save_dir_is_a_file,
        lambda t: [
            "RunDirectoryError",
            "runs/retrieval: Not a directory",
            "--trainer.logger.init_args.save_dir",
        ],
    ),
]
