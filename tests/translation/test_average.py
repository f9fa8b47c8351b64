"""Checkpoint averaging (``tasks.translation.average_checkpoints``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from fwp.model import EncoderDecoderConfig
from tasks.translation.average_checkpoints import average_checkpoints, main
from tasks.translation.module import TranslationModel

SIZES = {"d_model": 8, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_ff": 16}


def tiny_model(seed: int) -> TranslationModel:
    torch.manual_seed(seed)
    performer = {"name": "performer", "m": 4}
    return TranslationModel(
        backbone=EncoderDecoderConfig(encoder_attention=performer, decoder_attention=performer, **SIZES),
        vocab_size=20,
    )


def save_checkpoint(model: TranslationModel, path: Path, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint as Lightning writes it (the entries averaging and loading use)."""
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}
    torch.save(
        {
            "state_dict": state_dict,
            "global_step": step,
            "epoch": 0,
            "hyper_parameters": dict(model.hparams),
            "optimizer_states": [{"step": step}],
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return state_dict


def test_average_of_two_checkpoints_is_the_mean_of_their_tensors(tmp_path: Path) -> None:
    older = save_checkpoint(tiny_model(0), tmp_path / "step100.ckpt", 100)
    newer = save_checkpoint(tiny_model(1), tmp_path / "step200.ckpt", 200)
    save_checkpoint(tiny_model(2), tmp_path / "step50.ckpt", 50)  # too old to be chosen
    torch.save(torch.load(tmp_path / "step200.ckpt", weights_only=False), tmp_path / "last.ckpt")

    chosen = average_checkpoints([tmp_path], 2, tmp_path / "averaged" / "out.ckpt")

    assert [torch.load(path, weights_only=False)["global_step"] for path in chosen] == [200, 100]
    result = torch.load(tmp_path / "averaged" / "out.ckpt", weights_only=False)
    assert result["global_step"] == 200 and result["optimizer_states"] == [{"step": 200}]
    omega_keys = [key for key in newer if key.endswith(".omega")]
    assert omega_keys  # the performer cores draw random projections
    for key, tensor in result["state_dict"].items():
        expected = newer[key] if key in omega_keys else (older[key] + newer[key]) / 2
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)
    embedding = "model.decoder_embedding.weight"
    assert not torch.equal(result["state_dict"][embedding], newer[embedding])
    loaded = TranslationModel.load_from_checkpoint(tmp_path / "averaged" / "out.ckpt")
    torch.testing.assert_close(loaded.state_dict(), result["state_dict"])


def test_command_line_averages_files_and_rejects_too_few(tmp_path: Path, capsys) -> None:
    first = save_checkpoint(tiny_model(0), tmp_path / "a.ckpt", 1)
    second = save_checkpoint(tiny_model(1), tmp_path / "b.ckpt", 2)
    output = tmp_path / "avg.ckpt"
    main(
        [
            "--inputs",
            str(tmp_path / "a.ckpt"),
            str(tmp_path / "b.ckpt"),
            "--num",
            "2",
            "--output",
            str(output),
        ]
    )
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    key = "model.encoder.blocks.0.feed_forward.expand.weight"
    torch.testing.assert_close(
        torch.load(output, weights_only=False)["state_dict"][key], (first[key] + second[key]) / 2
    )
    with pytest.raises(SystemExit):
        main(["--inputs", str(tmp_path / "a.ckpt"), "--num", "2", "--output", str(output)])
    assert "found 1 distinct steps" in capsys.readouterr().err
