"""The translation LightningModule: an ``EncoderDecoder`` trained with label-smoothed cross-entropy,
evaluated with BLEU after greedy or beam-search decoding, and used to translate text (``predict``).

Training (fairseq's Transformer recipe): loss ``(1 − ε − ε/(V−1)) · nll + ε/(V−1) · Σ_v −log p_v``
per target token (label smoothing ε spread over the other ``V − 1`` classes), averaged over the
non-pad tokens of the batch; Adam with β = (0.9, 0.98), eps 1e-9; learning rate warmed up linearly
from ``warmup_init_lr`` to ``lr`` over ``warmup_steps`` optimiser steps, then ``lr · sqrt(warmup_steps
/ step)`` (inverse square root). Gradient clipping is the Trainer's ``gradient_clip_val``.

Evaluation: validation and test losses (label-smoothed, nll, perplexity) on teacher-forced targets; then
the sources are decoded (``val_beam_size`` during ``fit``, every ``bleu_every_n_validations``-th run;
``beam_size`` for ``validate``/``test``) and scored against the references of the split with both BLEU
variants of ``tasks.translation.metrics``, exactly under DDP (per-sentence statistics, keyed by sentence
id, sum-reduced across ranks). The sacreBLEU signature is printed and written to TensorBoard as text.

Outputs: standalone ``test`` (and ``validate``) writes the detokenised hypotheses in input order to
``<log_dir>/test_hypotheses.txt`` (``valid_hypotheses.txt``), beside the run's TensorBoard scores (a
``-v1``, ``-v2`` … suffix rather than replacing an existing file), and prints that path.
Predict: the batches of the data module's predict dataloader (source lines) are translated with
``beam_size``; translations are written in input order to ``predict_output`` (a path) or stdout.

Monitoring (``fwp.training.monitoring``): ``train/grad_norm`` (after the loss normalisation, before clipping),
throughput from ``throughput_counts`` (target tokens), ``hp_metric`` = the best ``valid/sacrebleu``
(``valid/loss`` when ``bleu_every_n_validations`` is 0), and at each validation of ``fit`` the first
``log_text_samples`` sentences of the first validation batch (source, hypothesis decoded with
``val_beam_size``, reference) as the TensorBoard text ``valid/samples``.

What the module needs from its data module (``TranslationDataModule``): ``bos_id``, ``eos_id``,
``tgt_lang`` (the target language: it picks the BLEU variants), ``decode(ids) -> str`` (detokenised,
stops at EOS) and ``references(split) -> list[str]`` indexed by the ``ids`` of the batches; batches
``{"src", "src_padding_mask", "tgt_in", "tgt_out", "tgt_padding_mask", "ids"}`` (prediction batches need
only ``src``, ``src_padding_mask``, ``ids``), or packed training batches ``{"src", "src_cu_seqlens",
"tgt_in", "tgt_out", "tgt_cu_seqlens", "ids"}`` (the data module's ``packed: true``): the same loss over
the same target tokens, without computing anything for padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from fwp.data import PAD_ID
from fwp.model import EncoderDecoder, EncoderDecoderConfig, beam_search, greedy_decode
from fwp.training.compilation import CompiledBackbone, decoding
from fwp.training.monitoring import GradientNormLogging, labelled_text, log_text
from fwp.training.optimization import adam_with_schedule
from fwp.training.outputs import check_output_file, new_file, write_lines
from tasks.translation.metrics import BleuVariant, CorpusBleuStatistics, SentenceSums, bleu_variants

Batch = dict[str, Tensor]


class TranslationData(Protocol):
    """The part of the data module the translation model uses."""

    bos_id: int
    eos_id: int
    tgt_lang: str

    def decode(self, ids: Sequence[int]) -> str: ...

    def references(self, split: str) -> list[str]: ...


LossNormalization = Literal["tokens", "batch"]
LOSS_NORMALIZATIONS = ("tokens", "batch")


def label_smoothed_token_losses(
    logits: Tensor, target: Tensor, *, epsilon: float, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """fairseq's label-smoothed cross-entropy per token.

    logits ``[..., V]``, target ``[...]`` → ``(loss, nll, keep)``, each ``[...]``, where per token
    ``loss = (1 − ε − ε/(V−1)) · nll + ε/(V−1) · Σ_v −log p_v`` (probability ``1 − ε`` on the target,
    ``ε/(V−1)`` on every other class), zero at ignored tokens, and ``keep`` is 1 at the other tokens;
    log-probabilities in at least float32.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got epsilon={epsilon}")
    log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    keep = (target != ignore_index).to(log_probs.dtype)
    nll = -log_probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    smooth = -log_probs.sum(dim=-1) * keep
    other = epsilon / (log_probs.shape[-1] - 1)
    return (1.0 - epsilon - other) * nll + other * smooth, nll, keep


class TranslationModel(CompiledBackbone, GradientNormLogging, L.LightningModule):
    """Encoder-decoder translation model.

    Args:
        vocab_size: from the data module (linked by the CLI; do not set in YAML). pad_id: the padding id
            of the data (``fwp.data.PAD_ID`` for every data module of this project).
        backbone: the ``EncoderDecoderConfig`` of the model: a ``preset`` (``wmt14-base``,
            ``wmt14-big``, ``synthetic``) and any fields to override, e.g. the registry specs
            ``encoder_attention`` (bidirectional: softmax or a sum-rule core), ``decoder_attention``
            (causal, any core) and ``cross_attention``; ``max_positions`` (positions of a learned table;
            decoding then stops before it).
        label_smoothing: ε of the loss.
        loss_normalization: ``tokens`` (fairseq): an optimizer step follows the gradient of the loss
            summed over all its micro-batches (gradient accumulation) and ranks, divided by their total
            number of target tokens; ``batch``: of each micro-batch's per-token mean, the micro-batches
            and ranks weighted alike (Lightning's plain averaging).
        lr, betas, adam_eps, weight_decay, warmup_steps, warmup_init_lr: Adam + inverse-sqrt schedule.
        beam_size, length_penalty, max_len_a, max_len_b: decoding for test, standalone validate and
            predict (``length_penalty``: fairseq's ``score / len^lenpen``; at most ``a · src_len + b``
            tokens).
        val_beam_size: decoding during ``fit`` validation (1 = greedy).
        bleu_every_n_validations: during ``fit``, decode and compute BLEU every n-th validation run
            (0 = never; the losses are logged at every run).
        predict_output: file the translations are written to (default: stdout).
        log_text_samples: sentences shown as TensorBoard text at each validation of ``fit`` (0: none).
        compile: compile the encoder's and decoder's Transformer blocks with ``torch.compile``
            (``fullgraph=True``, ``fwp.training.compilation``); the warm-up is printed.
    """

    BACKBONE_CONFIG = EncoderDecoderConfig

    # The arguments that shape the weights or what they compute: with --ckpt_path the run's values must
    # be the checkpoint's (fwp.training.cli); any other argument (decoding, optimisation, dropout) may differ.
    ARCHITECTURE_ARGUMENTS = frozenset({"vocab_size", "pad_id"} | EncoderDecoderConfig.architecture_fields())

    def __init__(
        self,
        vocab_size: int,
        pad_id: int = PAD_ID,
        backbone: EncoderDecoderConfig | None = None,
        label_smoothing: float = 0.1,
        loss_normalization: LossNormalization = "tokens",
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        adam_eps: float = 1e-9,
        weight_decay: float = 0.0,
        warmup_steps: int = 4000,
        warmup_init_lr: float = 1e-7,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        max_len_a: float = 1.2,
        max_len_b: int = 10,
        val_beam_size: int = 1,
        bleu_every_n_validations: int = 1,
        predict_output: str | None = None,
        log_text_samples: int = 3,
        compile: bool = False,
    ) -> None:
        super().__init__()
        checks = {
            "warmup_steps": (warmup_steps, 1),
            "beam_size": (beam_size, 1),
            "val_beam_size": (val_beam_size, 1),
            "bleu_every_n_validations": (bleu_every_n_validations, 0),
            "log_text_samples": (log_text_samples, 0),
        }
        for name, (value, minimum) in checks.items():
            if value < minimum:
                raise ValueError(f"TranslationModel: {name} must be >= {minimum}, got {name}={value}")
        if not 0.0 < warmup_init_lr <= lr:
            raise ValueError(
                f"TranslationModel: need 0 < warmup_init_lr <= lr, got {warmup_init_lr} and {lr}"
            )
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"TranslationModel: loss_normalization must be one of {list(LOSS_NORMALIZATIONS)}, "
                f"got loss_normalization={loss_normalization!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"TranslationModel: label_smoothing must be in [0, 1), got {label_smoothing}")
        for name, value in (("max_len_a", max_len_a), ("max_len_b", max_len_b)):
            if not value >= 0:
                raise ValueError(f"TranslationModel: {name} must be >= 0, got {name}={value}")
        if not math.isfinite(length_penalty):
            raise ValueError(
                f"TranslationModel: length_penalty must be finite, got length_penalty={length_penalty}"
            )
        check_output_file("predict_output", predict_output)
        config = EncoderDecoderConfig.of(backbone)
        self.save_hyperparameters()
        self.hparams["backbone"] = config.as_dict()  # resolved: a checkpoint rebuilds exactly this model
        self.model = EncoderDecoder(vocab_size, config, pad_id=pad_id)
        self.bleu_variants: tuple[BleuVariant, ...] = ()  # per evaluation, for the target language
        self._eval_sums: SentenceSums | None = None
        self._bleu_statistics: list[CorpusBleuStatistics] = []
        self._references: list[str] = []
        self._fit_validation_runs = 0
        self._eval_beam_size: int | None = None
        self._predictions: dict[int, str] = {}
        self._hypotheses: dict[int, str] = {}
        self._step_tokens = 0
        self.best_metric = "valid/sacrebleu" if bleu_every_n_validations else "valid/loss"
        self.best_metric_mode = "max" if bleu_every_n_validations else "min"

    # ----------------------------------------------------------------------------------- data access
    @property
    def data(self) -> TranslationData:
        """The trainer's data module (bos/eos ids, detokenisation, references)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            raise RuntimeError("TranslationModel needs a Trainer with a TranslationDataModule to decode text")
        return datamodule

    # ----------------------------------------------------------------------------------- model
    def forward(
        self, src: Tensor, src_padding_mask: Tensor | None, tgt_in: Tensor, **offsets: Tensor
    ) -> Tensor:
        """Teacher-forced logits ``[B, T, V]``; packed pairs (``offsets``: ``src_cu_seqlens`` and
        ``tgt_cu_seqlens``, ``EncoderDecoder.forward``): ``[1, T, V]``."""
        return self.model(src, src_padding_mask, tgt_in, **offsets)

    def translate(self, src: Tensor, src_padding_mask: Tensor, *, beam_size: int) -> list[list[int]]:
        """Target token ids per sentence of ``src`` ``[B, S]`` (greedy for ``beam_size`` 1), without
        BOS/EOS, with this model's length penalty and length limits."""
        options = {
            "bos_id": self.data.bos_id,
            "eos_id": self.data.eos_id,
            "pad_id": self.hparams.pad_id,
            "max_len_a": self.hparams.max_len_a,
            "max_len_b": self.hparams.max_len_b,
            "max_positions": self.model.position_limit,
        }
        with decoding(self):
            if beam_size == 1:
                return greedy_decode(self.model, src, src_padding_mask, **options)
            return beam_search(
                self.model,
                src,
                src_padding_mask,
                beam_size=beam_size,
                length_penalty=self.hparams.length_penalty,
                **options,
            )

    def throughput_counts(self, batch: Batch) -> tuple[int, int]:
        """Sentence pairs and target tokens (padding excluded) of ``batch``, for ``TaskThroughput``;
        source sentences and their tokens for a prediction batch (it has no target)."""
        if "tgt_cu_seqlens" in batch:
            return batch["ids"].numel(), batch["tgt_out"].numel()
        mask = batch.get("tgt_padding_mask", batch["src_padding_mask"])
        return mask.shape[0], int((~mask).sum())

    def token_losses(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced ``label_smoothed_token_losses`` of ``batch``: loss, nll and the target-token
        mask, each ``[B, T]`` (``[1, ΣT_b]`` for a packed batch)."""
        offsets = {name: batch[name] for name in ("src_cu_seqlens", "tgt_cu_seqlens") if name in batch}
        logits = self(batch["src"], batch.get("src_padding_mask"), batch["tgt_in"], **offsets)
        return label_smoothed_token_losses(
            logits, batch["tgt_out"], epsilon=self.hparams.label_smoothing, ignore_index=self.hparams.pad_id
        )

    # ----------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Refuses ``compile: true`` with packed training batches (the data module's ``packed: true``):
        the compiled blocks are one graph (``fullgraph``), and the offsets of packed sequences set
        shapes from their values, which that graph cannot trace (a ``MisconfigurationException``: the
        CLI ends it in one line)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.hparams.compile and getattr(datamodule, "packed", False):
            raise MisconfigurationException(
                "TranslationModel: compile: true cannot train on packed batches (data packed: true): the "
                "compiled blocks are one graph and packed offsets set shapes from their values; use one"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logs the batch's per-token means; returns that mean (``loss_normalization="batch"``) or the
        summed loss, which ``on_before_optimizer_step`` turns into the per-token mean of the step."""
        loss_sum, nll_sum, n_tokens = (x.sum() for x in self.token_losses(batch))
        denominator = n_tokens.clamp(min=1)
        self.log("train/loss", loss_sum / denominator, prog_bar=True)
        self.log("train/nll", nll_sum / denominator)
        if self.hparams.loss_normalization == "batch":
            return loss_sum / denominator
        self._step_tokens = self._step_tokens + n_tokens.detach()  # a tensor: no device sync per batch
        return loss_sum

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``loss_normalization="tokens"``: Lightning divided every summed micro-batch loss by
        ``accumulate_grad_batches`` (A) and DDP averaged the W ranks, so the gradients are rescaled by
        ``A · W / N``, ``N`` the target tokens of the step on all ranks: the gradient of ``Σ loss / N``.
        Runs before gradient clipping (and, with fp16, after unscaling)."""
        if self.hparams.loss_normalization != "tokens":
            return
        tokens = torch.as_tensor(self._step_tokens, dtype=torch.float64, device=self.device)
        tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        self._step_tokens = 0
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens.clamp(min=1.0)
        for parameter in self.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale)

    def configure_optimizers(self) -> dict:
        h = self.hparams
        return adam_with_schedule(
            self.parameters(),
            lr=h.lr,
            betas=h.betas,
            eps=h.adam_eps,
            weight_decay=h.weight_decay,
            schedule="inverse_sqrt",
            warmup_steps=h.warmup_steps,
            warmup_init_factor=h.warmup_init_lr / h.lr,
        )

    # ----------------------------------------------------------------------------------- evaluation
    def _decoding_beam_size(self) -> int | None:
        """The beam for this evaluation run, or None when it computes no BLEU."""
        if self.trainer.sanity_checking:
            return None
        if self.trainer.state.fn != "fit":
            return self.hparams.beam_size
        n = self.hparams.bleu_every_n_validations
        if n == 0 or self._fit_validation_runs % n:
            return None
        return self.hparams.val_beam_size

    def _start_evaluation(self, split: str) -> None:
        self._references = self.data.references(split)
        self._eval_sums = SentenceSums(len(self._references), 3).to(self.device)
        self._eval_beam_size = self._decoding_beam_size()
        self._hypotheses = {}
        if self._eval_beam_size is None:
            self._bleu_statistics = []
            return
        self.bleu_variants = bleu_variants(self.data.tgt_lang)
        self._bleu_statistics = [
            CorpusBleuStatistics(len(self._references)).to(self.device) for _ in self.bleu_variants
        ]

    def _evaluation_step(self, batch: Batch) -> None:
        """Per-sentence loss, nll and token counts (each sentence counted once across ranks, see
        ``SentenceSums``) and, on BLEU runs, the BLEU statistics of the decoded batch."""
        ids = batch["ids"]
        self._eval_sums.update(ids, torch.stack([x.sum(dim=-1) for x in self.token_losses(batch)], dim=-1))
        if self._eval_beam_size is None:
            return
        hypotheses = [
            self.data.decode(tokens)
            for tokens in self.translate(
                batch["src"], batch["src_padding_mask"], beam_size=self._eval_beam_size
            )
        ]
        self._hypotheses.update(zip(ids.tolist(), hypotheses, strict=True))
        references = [self._references[i] for i in ids.tolist()]
        for variant, statistics in zip(self.bleu_variants, self._bleu_statistics, strict=True):
            statistics.update(ids, variant.statistics(hypotheses, references).to(self.device))

    def _end_evaluation(self, split: str) -> None:
        (loss_sum, nll_sum, n_tokens), _ = self._eval_sums.compute()
        nll = (nll_sum / n_tokens.clamp(min=1)).float()
        self.log(f"{split}/loss", (loss_sum / n_tokens.clamp(min=1)).float(), prog_bar=True)
        self.log(f"{split}/nll", nll)
        self.log(f"{split}/ppl", torch.exp(nll))
        if self._eval_beam_size is None:
            return
        for variant, statistics in zip(self.bleu_variants, self._bleu_statistics, strict=True):
            totals, n_sentences = statistics.compute()
            score = variant.score(totals.cpu())
            self.log(f"{split}/{variant.name}", score.score, prog_bar=variant.name == "sacrebleu")
            self.print(f"{split} {variant.label}: {score} | {int(n_sentences)} sentences")
            tag, signature = f"{split}/{variant.name}_signature", variant.signature()
            self.print(f"{tag}: {signature}")
            log_text(self, tag, signature)
        if self.trainer.state.fn != "fit":
            self._write_hypotheses(split)

    def _write_hypotheses(self, split: str) -> None:
        """Every rank's hypotheses, detokenised, one line per sentence in input order, into a new file
        ``<log_dir>/<split>_hypotheses[-vN].txt`` beside the logged scores (rank 0), whose path is
        printed; nothing without a logger (no run directory)."""
        hypotheses = in_input_order(self._hypotheses)
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if not self.trainer.is_global_zero or log_dir is None:
            return
        path = new_file(Path(log_dir) / f"{split}_hypotheses.txt")
        write_lines(hypotheses, path)
        self.print(f"{split} hypotheses: {path}")

    def _log_validation_samples(self, batch: Batch) -> None:
        """The first ``log_text_samples`` sentences of ``batch`` (source, hypothesis with
        ``val_beam_size``, reference) as the TensorBoard text ``valid/samples`` (rank 0, ``fit`` only,
        not in the sanity check)."""
        count, trainer = self.hparams.log_text_samples, self.trainer
        if not count or trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        src, mask = batch["src"][:count], batch["src_padding_mask"][:count]
        hypotheses = self.translate(src, mask, beam_size=self.hparams.val_beam_size)
        entries = [
            "  \n".join(
                (
                    labelled_text("source", self.data.decode(row[~row_mask].tolist())),
                    labelled_text("hypothesis", self.data.decode(hypothesis)),
                    labelled_text("reference", self._references[i]),
                )
            )
            for row, row_mask, hypothesis, i in zip(
                src, mask, hypotheses, batch["ids"][:count].tolist(), strict=True
            )
        ]
        log_text(self, "valid/samples", "\n\n".join(entries))

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._fit_validation_runs += 1
        self._start_evaluation("valid")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self._log_validation_samples(batch)
        self._evaluation_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("valid")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    # ----------------------------------------------------------------------------------- predict
    def on_predict_epoch_start(self) -> None:
        self._predictions = {}

    def predict_step(self, batch: Batch, batch_idx: int) -> list[str]:
        translations = [
            self.data.decode(tokens)
            for tokens in self.translate(
                batch["src"], batch["src_padding_mask"], beam_size=self.hparams.beam_size
            )
        ]
        self._predictions.update(zip(batch["ids"].tolist(), translations, strict=True))
        return translations

    def on_predict_epoch_end(self) -> None:
        predictions = in_input_order(self._predictions)
        if self.trainer.is_global_zero:
            write_lines(predictions, self.hparams.predict_output)


def in_input_order(texts: dict[int, str]) -> list[str]:
    """Every rank's ``{sentence id: text}`` (gathered under torch.distributed, a collective; a sentence
    a distributed sampler gave to two ranks counts once), as a list ordered by sentence id."""
    if dist.is_available() and dist.is_initialized():
        gathered: list[dict[int, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, texts)
        texts = {i: text for part in gathered if part for i, text in part.items()}
    return [texts[i] for i in sorted(texts)]
