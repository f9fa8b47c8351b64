"""Checkpoint files: atomic writes, unreadable checkpoints named in a clean error, nothing overwritten."""

from __future__ import annotations

import hashlib

import pytest
import torch
from cli_runs import build, checkpoints_every, fit, retrieval_args

from fwp.training.checkpointing import AtomicCheckpointIO, CheckpointLoadError, write_atomically
from fwp.training.cli import main


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_bit(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


def test_atomic_write_replaces_the_file_and_loads_back(tmp_path):
    path = tmp_path / "sub" / "model.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"x": torch.arange(3)}, path)
    io.save_checkpoint({"x": torch.arange(4)}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.arange(4))
    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]


def test_interrupted_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    before = digest(path)

    def crash_half_way(file):
        file.write(b"PK\x03\x04 partial checkpoint bytes")
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, crash_half_way)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a checkpoint at all" * 10, id="garbage"),
        pytest.param(lambda data: flip_bit(data, len(data) // 2), id="flipped-bit"),
    ],
)
def test_unreadable_checkpoint_is_named(tmp_path, damage):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.randn(2000)}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(CheckpointLoadError, match=r"bad\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(bad)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointLoadError, match=r"nowhere\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "nowhere.ckpt")


def test_resuming_from_a_truncated_checkpoint_is_a_clean_error_and_writes_nothing(tmp_path, capsys):
    options = ["--trainer.max_steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    fit(build(retrieval_args("setting1_delta", *options), checkpoints_every(tmp_path / "ckpt", steps=2)))
    (good,) = (tmp_path / "ckpt").iterdir()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    before = {p.name: digest(p) for p in tmp_path.rglob("*.ckpt")}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *retrieval_args("setting1_delta", *options), "--ckpt_path", str(truncated)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "fwp: error: CheckpointLoadError" in error and str(truncated) in error
    assert {p.name: digest(p) for p in tmp_path.rglob("*.ckpt")} == before


def test_every_run_writes_through_the_atomic_checkpoint_io(tmp_path):
    cli = build(retrieval_args("setting1_delta", "--trainer.logger", "false"))
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
