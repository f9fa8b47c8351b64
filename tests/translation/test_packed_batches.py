"""The translation data module's ``packed: true``: training batches of the same pairs without padding, on
which a training step computes the same loss and gradients as on the padded batches (float64)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning_runs import quiet_trainer

from fwp.data import PAD_ID
from fwp.model import EncoderDecoderConfig
from tasks.translation.data import TranslationDataModule
from tasks.translation.module import TranslationModel
from tasks.translation.synthetic import write_synthetic_parallel_corpus

TINY = {"d_model": 16, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_ff": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return write_synthetic_parallel_corpus(
        tmp_path_factory.mktemp("parallel"), n_train=300, n_valid=20, n_test=10
    )


def data_module(corpus, tmp_path, **kwargs) -> TranslationDataModule:
    options = {"bpe_vocab_size": 400, "max_tokens": 200, "max_positions": 64, "cache_dir": str(tmp_path)}
    return TranslationDataModule(str(corpus), **(options | kwargs))


def unpadded(rows: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The non-padding tokens of ``rows`` ``[B, L]`` end to end ``[1, Σ l]`` and the row lengths."""
    return rows[~padding][None, :], (~padding).sum(dim=1).tolist()


def test_packed_training_batches_hold_the_padded_pairs(corpus, tmp_path) -> None:
    padded, packed = data_module(corpus, tmp_path), data_module(corpus, tmp_path, packed=True)
    for data in (padded, packed):
        data.prepare_data()
        data.setup("fit")
    assert len(packed.datasets["train"]) == len(padded.datasets["train"]) > 1
    model = TranslationModel(padded.vocab_size, backbone=EncoderDecoderConfig(**TINY))
    for index in range(len(padded.datasets["train"])):
        plain, joined = padded.datasets["train"][index], packed.datasets["train"][index]
        assert model.throughput_counts(joined) == model.throughput_counts(plain)
        assert set(joined) == {"src", "src_cu_seqlens", "tgt_in", "tgt_out", "tgt_cu_seqlens", "ids"}
        torch.testing.assert_close(joined["ids"], plain["ids"])
        src, src_lengths = unpadded(plain["src"], plain["src_padding_mask"])
        tgt_in, tgt_lengths = unpadded(plain["tgt_in"], plain["tgt_padding_mask"])
        tgt_out, _ = unpadded(plain["tgt_out"], plain["tgt_padding_mask"])
        torch.testing.assert_close(joined["src"], src)
        torch.testing.assert_close(joined["tgt_in"], tgt_in)
        torch.testing.assert_close(joined["tgt_out"], tgt_out)
        assert (joined["tgt_out"] != PAD_ID).all()
        assert joined["src_cu_seqlens"].tolist() == [0, *torch.tensor(src_lengths).cumsum(0).tolist()]
        assert joined["tgt_cu_seqlens"].tolist() == [0, *torch.tensor(tgt_lengths).cumsum(0).tolist()]
    assert "src_padding_mask" in packed.datasets["valid"][0]  # evaluation stays padded


class RecordsTheSteps(L.Callback):
    """Every training step's logged loss and the gradients the optimizer used."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.gradients: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradients.append([p.grad.clone() for p in pl_module.parameters()])
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize(
    "attentions",
    [("linear", "delta", "softmax"), ("dpfp", "gated_deltanet", "linear")],
    ids=["linear-delta-softmax", "dpfp-gated_deltanet-linear"],
)
def test_a_packed_training_step_equals_a_padded_one(corpus, tmp_path, attentions) -> None:
    """Two optimizer steps on packed batches and on the same pairs padded: the same logged losses,
    gradients and weights (float64). Catches a packed loss that counts other tokens than the padded
    one, or a model that lets a pair see another pair of its batch."""
    encoder, decoder, cross = attentions
    runs = {}
    for packed in (False, True):
        data = data_module(corpus, tmp_path, packed=packed)
        torch.manual_seed(0)
        backbone = EncoderDecoderConfig(
            **TINY, encoder_attention=encoder, decoder_attention=decoder, cross_attention=cross
        )
        model = TranslationModel(data.vocab_size, backbone=backbone, warmup_steps=2)
        recorder = RecordsTheSteps()
        trainer = quiet_trainer(
            max_steps=2, limit_val_batches=0, precision="64-true", callbacks=[recorder], log_every_n_steps=1
        )
        trainer.fit(model, datamodule=data)
        runs[packed] = recorder, [p.detach().clone() for p in model.parameters()]
    (padded, padded_weights), (packed, packed_weights) = runs[False], runs[True]
    assert len(packed.losses) == 2
    assert packed.losses == pytest.approx(padded.losses, rel=1e-10)
    for step in range(2):
        for a, e in zip(packed.gradients[step], padded.gradients[step], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-12)
    for a, e in zip(packed_weights, padded_weights, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-12)


def test_compiled_training_on_packed_batches_is_refused(corpus, tmp_path) -> None:
    data = data_module(corpus, tmp_path, packed=True)
    model = TranslationModel(data.vocab_size, backbone=EncoderDecoderConfig(**TINY), compile=True)
    with pytest.raises(MisconfigurationException, match="compile: true cannot train on packed batches"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
