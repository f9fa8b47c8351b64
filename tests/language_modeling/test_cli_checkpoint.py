"""A checkpoint written by ``cli.py fit`` loads back through ``--ckpt_path`` (validate and predict)."""

from pathlib import Path

import pytest
import torch

from fwp.training.cli import main
from tasks.language_modeling.synthetic import write_synthetic_corpus

CONF = Path(__file__).resolve().parents[2] / "conf" / "lm"


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_fit_checkpoint_reloads_through_the_cli(subcommand, tmp_path, monkeypatch):
    """The model that validates or predicts holds the checkpoint's weights, every tensor of them (a run
    that built the model but loaded nothing, or only some layers, must fail; the fit's two steps moved
    the weights away from the initialisation the second run starts from)."""
    monkeypatch.chdir(tmp_path)
    corpus = write_synthetic_corpus(tmp_path / "corpus", train_lines=60, valid_lines=10, test_lines=10)
    common = [
        "--config", str(CONF / "synthetic.yaml"),
        "--data.init_args.data_dir", str(corpus),
        "--data.init_args.segment_length", "16",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    main(["fit", *common, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    extra = ["--model.init_args.max_new_tokens", "3"]
    cli = main(
        [subcommand, *common, "--ckpt_path", str(checkpoint), *(extra if subcommand == "predict" else [])]
    )
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    loaded = cli.model.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name].cpu(), tensor), name
