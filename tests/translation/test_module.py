"""The translation LightningModule: loss, schedule, BLEU during training, learning, predict."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning_runs import quiet_trainer
from torch.utils.data import DataLoader

from fwp.data import PAD_ID
from fwp.model import EncoderDecoderConfig
from fwp.training.cli import main
from tasks.translation.data import TranslationDataModule
from tasks.translation.module import TranslationModel, label_smoothed_token_losses
from tasks.translation.synthetic import write_synthetic_parallel_corpus

CONF = Path(__file__).resolve().parents[2] / "conf" / "mt"
# the embedded default, shortened: learning must lift BLEU above what an untrained model reaches
LEARNING_STEPS = 240
BLEU_THRESHOLD = 20.0
TINY = {"d_model": 16, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_ff": 16}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_parallel_corpus(
        tmp_path_factory.mktemp("corpus"), n_train=4000, n_valid=60, n_test=12
    )


def test_label_smoothed_loss_is_cross_entropy_against_the_smoothed_distribution() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    target = torch.randint(1, 7, (2, 5))
    target[1, 3:] = 0  # padding
    epsilon = 0.1
    losses = label_smoothed_token_losses(logits, target, epsilon=epsilon, ignore_index=0)
    loss, nll, n_tokens = (x.sum() for x in losses)
    keep = target != 0
    smoothed = torch.full((int(keep.sum()), 7), epsilon / 6, dtype=torch.float64)
    smoothed.scatter_(1, target[keep][:, None], 1.0 - epsilon)
    expected = -(smoothed * torch.log_softmax(logits[keep], dim=-1)).sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(logits[keep], target[keep], reduction="sum"))
    assert int(n_tokens) == 8
    with pytest.raises(ValueError, match="label smoothing"):
        label_smoothed_token_losses(logits, target, epsilon=1.0, ignore_index=0)


def test_inverse_sqrt_schedule_and_adam_settings() -> None:
    model = TranslationModel(
        backbone=EncoderDecoderConfig(**TINY), vocab_size=12, lr=1e-3, warmup_steps=4, warmup_init_lr=1e-7
    )
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.98), 1e-9, 0.0)
    rates = []
    for _ in range(16):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    first = 1e-7 + (1e-3 - 1e-7) / 4  # the first of 4 warm-up updates
    assert rates[0] == pytest.approx(first)
    assert rates[3] == pytest.approx(1e-3) and rates[16 - 1] == pytest.approx(1e-3 * math.sqrt(4 / 16))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        TranslationModel(vocab_size=12, beam_size=0)
    with pytest.raises(ValueError, match="warmup_init_lr"):
        TranslationModel(vocab_size=12, lr=1e-4, warmup_init_lr=1e-3)
    with pytest.raises(ValueError, match="unknown attention"):
        TranslationModel(backbone=EncoderDecoderConfig(decoder_attention="nope"), vocab_size=12)
    with pytest.raises(ValueError, match=r"max_len_a must be >= 0, got max_len_a=-1.0"):
        TranslationModel(vocab_size=12, max_len_a=-1.0)
    with pytest.raises(ValueError, match=r"max_len_b must be >= 0, got max_len_b=-5"):
        TranslationModel(vocab_size=12, max_len_b=-5)
    with pytest.raises(ValueError, match=r"length_penalty must be finite, got length_penalty=nan"):
        TranslationModel(vocab_size=12, length_penalty=float("nan"))
    with pytest.raises(ValueError, match=r"n_decoder_layers must be >= 1, got n_decoder_layers=0"):
        TranslationModel(backbone=EncoderDecoderConfig(n_decoder_layers=0), vocab_size=12)
    with pytest.raises(ValueError, match=r"log_text_samples must be >= 0"):
        TranslationModel(vocab_size=12, log_text_samples=-1)


def test_a_predict_output_that_cannot_be_a_file_is_refused_at_construction(tmp_path: Path) -> None:
    """It failed with a traceback after translating the whole input."""
    with pytest.raises(ValueError, match=f"predict_output {tmp_path} is a directory"):
        TranslationModel(vocab_size=12, predict_output=str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"predict_output .*file/out.txt: cannot create it under"):
        TranslationModel(vocab_size=12, predict_output=str(tmp_path / "file" / "out.txt"))
    TranslationModel(
        backbone=EncoderDecoderConfig(d_model=8, n_heads=2, d_ff=8),
        vocab_size=12,
        predict_output=str(tmp_path / "new" / "o.txt"),
    )


def test_the_embedded_default_learns_the_synthetic_corpus(corpus: Path, tmp_path: Path) -> None:
    """``conf/mt/synthetic.yaml`` with fewer steps: BLEU (greedy, 60 validation sentences) must
    rise from below the threshold (untrained) to above it; BLEU is computed every second validation."""
    overrides = [
        f"--data.init_args.data_dir={corpus}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--model.init_args.beam_size=1",
        "--model.init_args.warmup_steps=50",
        "--model.init_args.bleu_every_n_validations=2",
        f"--trainer.max_steps={LEARNING_STEPS}",
        f"--trainer.val_check_interval={LEARNING_STEPS // 2}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=null",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli = main(["--config", str(CONF / "synthetic.yaml"), *overrides], run=False)
    untrained = quiet_trainer().validate(cli.model, cli.datamodule, verbose=False)[0]["valid/sacrebleu"]

    bleu_after_validation = []

    class RecordBleu(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            bleu_after_validation.append(trainer.callback_metrics.get("valid/sacrebleu"))

    cli.trainer.callbacks.append(RecordBleu())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert len(bleu_after_validation) == 2 and bleu_after_validation[0] is None  # BLEU every 2nd run
    trained = float(bleu_after_validation[1])
    assert untrained < BLEU_THRESHOLD < trained, (untrained, trained)


def test_predict_writes_translations_in_input_order(corpus: Path, tmp_path: Path) -> None:
    lines = (corpus / "test.src").read_text().splitlines()
    source_file = tmp_path / "input.txt"
    source_file.write_text("\n".join(lines) + "\n")
    data = TranslationDataModule(
        data_dir=str(corpus),
        cache_dir=str(tmp_path / "cache"),
        bpe_vocab_size=300,
        max_positions=64,
        max_tokens=160,
        predict_file=str(source_file),
    )
    torch.manual_seed(0)
    output = tmp_path / "out" / "translations.txt"
    model = TranslationModel(
        data.vocab_size,
        data.pad_id,
        backbone=EncoderDecoderConfig(
            **TINY, encoder_attention="linear", decoder_attention="delta", dropout=0.0
        ),
        beam_size=2,
        max_len_a=0.5,
        max_len_b=2,
        predict_output=str(output),
    )
    returned = quiet_trainer().predict(model, data)
    assert len(returned) > 1  # several batches, sorted by length: not in input order
    translations = output.read_text().splitlines()
    assert len(translations) == len(lines)
    encoded = [data.tokenizer.encode(line.strip()).ids for line in lines]
    for line_tokens, translation in zip(encoded, translations, strict=True):
        src = torch.tensor([line_tokens])
        alone = model.translate(src, torch.zeros_like(src, dtype=torch.bool), beam_size=2)[0]
        assert data.decode(alone) == translation


class RepeatsTheFirstValidationBatch(TranslationDataModule):
    """Validation batches as a distributed sampler deals them when it evens out the ranks: the first
    batch comes once more at the end."""

    def val_dataloader(self) -> RepeatedBatches:
        return RepeatedBatches(list(super().val_dataloader()))


class RepeatedBatches:
    """``batches`` and then ``batches[0]`` again (one iterable, not a list of loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = [*batches, batches[0]]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_a_repeated_batch_counts_once_in_the_validation_loss(corpus: Path, tmp_path: Path) -> None:
    """Under DDP the sampler repeats batches to give every rank as many: loss, nll and BLEU count each
    sentence once, so they equal a single process's."""
    options = {"data_dir": str(corpus), "cache_dir": str(tmp_path / "cache"), "bpe_vocab_size": 300}
    options |= {"max_positions": 64, "max_tokens": 160}
    plain, repeating = TranslationDataModule(**options), RepeatsTheFirstValidationBatch(**options)
    torch.manual_seed(0)
    model = TranslationModel(
        plain.vocab_size,
        plain.pad_id,
        backbone=EncoderDecoderConfig(**TINY, dropout=0.0),
        beam_size=1,
        max_len_b=4,
    )
    expected = quiet_trainer().validate(model, plain, verbose=False)[0]
    actual = quiet_trainer().validate(model, repeating, verbose=False)[0]
    assert len(repeating.val_dataloader()) == len(plain.val_dataloader()) + 1 > 2
    for name in ("valid/loss", "valid/nll", "valid/sacrebleu"):
        assert actual[name] == pytest.approx(expected[name], rel=1e-6), name


class GradientsAfterTheStep(L.Callback):
    """The parameters' gradients as the optimizer used them (read after the first step's last batch)."""

    def __init__(self) -> None:
        self.gradients: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and not self.gradients:
            self.gradients = [p.grad.clone() for p in pl_module.parameters()]


def two_batches_of_different_lengths() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for rows, length in ((2, 3), (3, 7)):
        src = torch.randint(3, 12, (rows, 5), generator=g)
        tgt = torch.randint(3, 12, (rows, length + 1), generator=g)
        tgt[0, -2:] = PAD_ID  # some padding
        batch = {"src": src, "src_padding_mask": torch.zeros_like(src, dtype=torch.bool)}
        batches.append(batch | {"tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]})
    return batches


@pytest.mark.parametrize("normalization", ["tokens", "batch"])
def test_loss_normalization_of_an_accumulated_step(normalization: str) -> None:
    """``tokens`` (fairseq): the step's gradient is that of the loss summed over both accumulated
    batches divided by their tokens; ``batch``: the mean of the two batches' per-token means."""
    torch.manual_seed(0)
    model = TranslationModel(
        12, PAD_ID, backbone=EncoderDecoderConfig(**TINY, dropout=0.0), loss_normalization=normalization
    )
    batches = two_batches_of_different_lengths()
    expected_model = copy.deepcopy(model)
    sums = [
        tuple(
            x.sum()
            for x in label_smoothed_token_losses(
                expected_model(b["src"], b["src_padding_mask"], b["tgt_in"]),
                b["tgt_out"],
                epsilon=0.1,
                ignore_index=PAD_ID,
            )
        )
        for b in batches
    ]
    if normalization == "tokens":
        objective = sum(loss for loss, _, _ in sums) / sum(n for _, _, n in sums)
    else:
        objective = sum(loss / n for loss, _, n in sums) / 2
    objective.backward()
    recorder = GradientsAfterTheStep()
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    for actual, parameter in zip(recorder.gradients, expected_model.parameters(), strict=True):
        torch.testing.assert_close(actual, parameter.grad, rtol=1e-5, atol=1e-7)
