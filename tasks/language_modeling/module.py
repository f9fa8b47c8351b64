"""The language-modelling LightningModule: a ``DecoderLM`` trained on Transformer-XL segments.

Loss: mean token cross-entropy ``−(1/N) Σ log p(target)`` of a segment, computed in float32.
Evaluation: the NLL summed over every target token of the split (float64 sums, reduced across ranks)
→ ``ppl = exp(Σ NLL / N)``, logged as ``valid/ppl`` / ``test/ppl`` (and ``valid/loss`` / ``test/loss``,
the mean NLL in nats) at the end of the epoch. Batches are segments (``segment_log_probs``) or, from
the data module's ``eval_mode="sliding"``, sliding windows with a ``score_from`` per row
(``window_log_probs``: only the scored targets count, every window starts from empty memory).

State carry: with ``carry_state`` the layers' states (fast weights) after one segment start the next
segment of the same columns, cut from the graph (gradients stay within a segment), and positions
continue (``position_offset``); a batch with ``segment_index == 0``, or one that does not follow the
previous batch, starts from empty memory. Training and evaluation each carry their own stream
(``eval_carry_state``, default: as in training). The training stream is checkpointed
(``CARRIED_STATE_KEY``: every layer's state of all ranks' columns, concatenated in column order), so a
resumed run continues its memory exactly; a checkpoint without it (older runs) or with another number
of columns (other batch size × world size) resumes from empty memory, with a warning.

Optimisation: AdamW (Adam when ``weight_decay`` is 0), a linear warm-up over ``warmup_steps`` then
``schedule``: ``cosine`` decay to 0 at the last step, ``constant``, or ``inverse_sqrt`` (``∝ 1/√step``);
stepped every optimiser step. Gradient clipping is the Trainer's ``gradient_clip_val``.

Prediction (``predict``): one prompt is continued ``num_samples`` times by ``max_new_tokens`` tokens in
step mode, drawn with ``temperature`` and ``top_k`` (``temperature`` 0: greedy, every sample the same).
The prompt is ``prompt`` (text) or the text of ``prompt_file`` (its lines separated by ``<eos>``, as in
the corpus), tokenised with the data module's tokenizer; without either, the first ``prompt_length``
tokens of the first predict batch (the test split's start). The continuations are written one per line
to ``predict_output`` or to stdout (``write_lines``) and returned. A prompt that is empty, holds words
outside the vocabulary (word tokenizer; ``<unk>`` itself is allowed), or would need more positions than
a learned position table has, is refused with an error naming the option.

Monitoring (``fwp.training.monitoring``): ``train/grad_norm`` before clipping, throughput from
``throughput_counts``, ``hp_metric`` = the best ``valid/ppl``, and at each validation of ``fit``
``log_text_samples`` continuations of the validation split's first ``prompt_length`` tokens as the
TensorBoard text ``valid/samples`` (drawn with their own seeded generator: the run's random streams
are untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from fwp.data.files import DataError
from fwp.data.tokenizer import EOS_ID, UNK_ID
from fwp.model import (
    DecoderLM,
    DecoderLMConfig,
    check_generation_fits,
    check_sampling_options,
    detach_states,
    sample,
    saved_state_shape,
)
from fwp.training.compilation import CompiledBackbone, decoding
from fwp.training.monitoring import GradientNormLogging, labelled_text, log_text
from fwp.training.optimization import SCHEDULES, Schedule, adam_with_schedule
from fwp.training.outputs import check_output_file, write_lines

CARRIED_STATE_KEY = "carried_train_state"


class TokenNLL(Metric):
    """Negative log-likelihood summed over tokens (float64) and the token count, sum-reduced across
    ranks, so the epoch's ``compute()`` — the mean NLL per token — is exact under DDP."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target_log_probs: Tensor) -> None:
        """Add ``log p(target)`` of a batch of tokens (any shape)."""
        self.nll_sum = self.nll_sum - target_log_probs.detach().double().sum()
        self.tokens = self.tokens + target_log_probs.numel()

    def compute(self) -> Tensor:
        return self.nll_sum / self.tokens


@dataclass
class CarriedStream:
    """Memory carried along one stream of segments: the layers' states and where the next segment
    starts (its ``segment_index`` and the position of its first token)."""

    states: list
    next_segment: int
    next_position: int


def prompt_text(prompt: str | None, prompt_file: str | None) -> str | None:
    """The prompt given as text or as a UTF-8 file (its text without the final line break), or None;
    a ``ValueError`` (``FileNotFoundError``) naming the option if both are given, the file is missing or
    unreadable, or the prompt is blank."""
    if prompt is not None and prompt_file is not None:
        raise ValueError("give the prompt as prompt or as prompt_file, not both")
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file {path}: no such file")
        try:
            prompt = path.read_text(encoding="utf-8").removesuffix("\n")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"prompt_file {path}: not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
    if prompt is not None and not prompt.strip():
        where = f"prompt_file {prompt_file}" if prompt_file is not None else "prompt"
        raise ValueError(f"{where}: the prompt is empty (give some text to continue, or no prompt)")
    return prompt


class LanguageModel(CompiledBackbone, GradientNormLogging, L.LightningModule):
    """Decoder-only language model over ``vocab_size`` tokens (linked from the data module).

    ``backbone``: the ``DecoderLMConfig`` of the model (a ``preset`` such as ``wt103-small`` and any
    fields to override; ``attention`` is a registry spec such as ``delta`` or ``{name: performer, m:
    16}``). See the module docstring for ``carry_state``, ``eval_carry_state``, the optimiser and
    schedule arguments (``max_steps`` None: the Trainer's), and the prediction arguments:
    ``num_samples`` (>= 1), ``prompt`` or ``prompt_file`` (at most one; neither: ``prompt_length``
    tokens of the test split), ``max_new_tokens``, ``temperature`` (>= 0, 0 = greedy), ``top_k``,
    ``predict_output`` (a file; None: stdout). ``log_text_samples``: validation continuations logged as
    TensorBoard text during ``fit`` (0: none). ``compile``: compile the backbone's Transformer blocks
    with ``torch.compile`` (``fullgraph=True``, ``fwp.training.compilation``); the warm-up is printed.
    """

    best_metric = "valid/ppl"
    best_metric_mode = "min"
    BACKBONE_CONFIG = DecoderLMConfig

    # The arguments that shape the weights or what they compute: with --ckpt_path the run's values must
    # be the checkpoint's (fwp.training.cli); any other argument (decoding, optimisation, dropout) may differ.
    ARCHITECTURE_ARGUMENTS = frozenset({"vocab_size"} | DecoderLMConfig.architecture_fields())

    def __init__(
        self,
        vocab_size: int,
        backbone: DecoderLMConfig | None = None,
        carry_state: bool = False,
        eval_carry_state: bool | None = None,
        lr: float = 2.5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: Schedule = "cosine",
        max_steps: int | None = None,
        prompt_length: int = 16,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        num_samples: int = 1,
        prompt: str | None = None,
        prompt_file: str | None = None,
        predict_output: str | None = None,
        log_text_samples: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        config = DecoderLMConfig.of(backbone)
        self.save_hyperparameters()
        self.hparams["backbone"] = config.as_dict()  # resolved: a checkpoint rebuilds exactly this model
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got schedule={schedule!r}")
        for name, value in (("lr", lr), ("prompt_length", prompt_length), ("num_samples", num_samples)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {name}={value}")
        for name, value in (
            ("warmup_steps", warmup_steps),
            ("weight_decay", weight_decay),
            ("log_text_samples", log_text_samples),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={value}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got max_steps={max_steps}")
        check_sampling_options(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
        check_output_file("predict_output", predict_output)
        self.prompt_text = prompt_text(prompt, prompt_file)
        self.model = DecoderLM(vocab_size, config)
        self.carry_state = carry_state
        self.eval_carry_state = carry_state if eval_carry_state is None else eval_carry_state
        if (self.carry_state or self.eval_carry_state) and not self.model.bounded_state:
            raise ValueError(
                "carry_state/eval_carry_state need fast-weight attention (a fixed-size state) in every "
                f"layer, got backbone.attention={config.attention!r}"
            )
        if (self.carry_state or self.eval_carry_state) and config.positional == "learned":
            raise ValueError(
                "carrying state continues positions without bound; use backbone.positional='none' (the "
                "paper's choice) or 'sinusoidal', got positional='learned'"
            )
        check_generation_fits(self.model, prompt_length, max_new_tokens)  # test-split and validation prompts
        self.valid_nll = TokenNLL()
        self.test_nll = TokenNLL()
        self.streams: dict[str, CarriedStream] = {}
        self._restored_train_state: dict[str, Any] | None = None
        self._prompt_ids: list[int] | None = None
        self._valid_prompt: Tensor | None = None

    def forward(self, tokens: Tensor, *, states: list | None = None, position_offset: int = 0):
        """``DecoderLM.forward``: logits (hidden states with an adaptive softmax) and layer states."""
        return self.model(tokens, states=states, position_offset=position_offset)

    def segment_log_probs(self, batch: dict[str, Any], stream: str, carry: bool) -> Tensor:
        """``log p(target)`` ``[B, T]`` of a segment, continuing (and updating) the carried ``stream``
        when ``carry``."""
        inputs, segment = batch["input"], int(batch["segment_index"])
        carried = self.streams.get(stream)
        follows = carry and carried is not None and segment != 0 and carried.next_segment == segment
        states, position = (carried.states, carried.next_position) if follows else (None, 0)
        output, states = self.model(inputs, states=states, position_offset=position)
        if carry:
            self.streams[stream] = CarriedStream(
                detach_states(states), segment + 1, position + inputs.shape[1]
            )
        return self.model.target_log_probs(output, batch["target"])

    def window_log_probs(self, batch: dict[str, Any]) -> Tensor:
        """``log p(target)`` ``[n]`` of the scored targets of a batch of sliding windows (input, target
        ``[K, T]``, score_from ``[K]``): row ``k`` scores positions ``t ≥ score_from[k]``. Every window
        starts from empty memory at position 0; only the scored positions reach the output layer."""
        hidden, _ = self.model.hidden_states(batch["input"])
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        scored = positions >= batch["score_from"][:, None]
        return self.model.target_log_probs(self.model.output_scores(hidden[scored]), batch["target"][scored])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = -self.segment_log_probs(batch, "train", self.carry_state).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def throughput_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        """Rows (segments or windows) and input tokens of ``batch``, for ``TaskThroughput``."""
        return batch["input"].shape[0], batch["input"].numel()

    def evaluation_step(self, batch: dict[str, Any], split: str, metric: TokenNLL) -> None:
        """Adds the batch's target log-probabilities to ``metric``: a batch of sliding windows (it has
        ``score_from``) or a segment of ``split``'s stream (carried with ``eval_carry_state``)."""
        if "score_from" in batch:
            metric.update(self.window_log_probs(batch))
        else:
            metric.update(self.segment_log_probs(batch, split, self.eval_carry_state))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch_idx == 0:
            self._valid_prompt = batch["input"][:1, : self.hparams.prompt_length]
        self.evaluation_step(batch, "valid", self.valid_nll)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "test", self.test_nll)

    def log_perplexity(self, split: str, metric: TokenNLL) -> None:
        mean_nll = metric.compute()
        self.log(f"{split}/loss", mean_nll.float(), sync_dist=True)
        self.log(f"{split}/ppl", mean_nll.exp().float(), prog_bar=True, sync_dist=True)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_perplexity("valid", self.valid_nll)
        self.log_validation_samples()

    def log_validation_samples(self) -> None:
        """During ``fit`` (rank 0, not in the sanity check): ``log_text_samples`` continuations of the
        first validation batch's first ``prompt_length`` tokens as the TensorBoard text
        ``valid/samples``, drawn with a generator seeded by the step (the run's random state is not
        touched, so training continues exactly as without them)."""
        count, prompt = self.hparams.log_text_samples, self._valid_prompt
        trainer = self.trainer
        if not count or prompt is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if not trainer.is_global_zero:  # no collective inside: the other ranks go on
            return
        generator = torch.Generator(device=prompt.device).manual_seed(self.global_step)
        samples = self.generate(prompt.expand(count, -1), generator=generator)
        lines = [labelled_text("prompt", self.detokenize(prompt[0].tolist()))]
        lines += [labelled_text(f"sample {i + 1}", sample["generated"]) for i, sample in enumerate(samples)]
        log_text(self, "valid/samples", "  \n".join(lines))

    def on_test_epoch_end(self) -> None:
        self.log_perplexity("test", self.test_nll)

    def gather_columns(self, tensor: Tensor) -> Tensor:
        """This rank's rows ``[B, ...]`` → every rank's ``[W·B, ...]`` in rank order, which is column
        order (rank ``r`` owns columns ``r·B .. (r+1)·B - 1``). Collective under DDP."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor).flatten(0, 1)

    def carried_train_state(self) -> dict[str, Any] | None:
        """The training stream as saved in checkpoints: ``next_segment``, ``next_position``, and per
        layer ``W`` ``[C, H, d_dot, d_v]`` and ``z`` ``[C, H, d_dot]`` (or None) of all ``C = W·B``
        columns; None before the first carried segment."""
        if self._restored_train_state is not None:  # resumed, not continued yet: still the run's state
            return self._restored_train_state
        stream = self.streams.get("train")
        if stream is None:
            return None
        return {
            "next_segment": stream.next_segment,
            "next_position": stream.next_position,
            **self.model.export_states(stream.states, self.gather_columns),
        }

    def restored_train_stream(self, saved: dict[str, Any], rows: int) -> CarriedStream | None:
        """This rank's ``rows`` columns of a saved training stream (``carried_train_state``), on this
        module's device; None, with a warning naming the shapes, if it holds another number of columns
        than ``world_size × rows``."""
        world_size, rank = self.trainer.world_size, self.trainer.global_rank
        saved_shape = saved_state_shape(saved)
        if saved_shape[0] != world_size * rows:
            rank_zero_warn(
                f"the checkpoint's carried training state holds {saved_shape[0]} columns (layer 0's W "
                f"{list(saved_shape)}), this run has {world_size * rows} (world_size={world_size} × "
                f"batch_size={rows}, W [{rows}, {', '.join(map(str, saved_shape[1:]))}] per rank): "
                "training resumes from empty memory"
            )
            return None
        own = slice(rank * rows, (rank + 1) * rows)

        states = self.model.import_states(saved, lambda tensor: tensor[own].to(self.device))
        return CarriedStream(states, saved["next_segment"], saved["next_position"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With ``carry_state``, saves the training stream under ``CARRIED_STATE_KEY`` (called on every
        rank: the states are gathered)."""
        if self.carry_state:
            checkpoint[CARRIED_STATE_KEY] = self.carried_train_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When training resumes with ``carry_state``, keeps the saved training stream until the first
        training batch, which takes this rank's columns of it; warns if the checkpoint has none."""
        resuming = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if not (self.carry_state and resuming):
            return
        if CARRIED_STATE_KEY not in checkpoint:
            rank_zero_warn(
                f"the checkpoint has no carried training state ('{CARRIED_STATE_KEY}'; written by an "
                "older version?): training resumes from empty memory"
            )
        self._restored_train_state = checkpoint.get(CARRIED_STATE_KEY)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The first training batch after resuming continues the checkpoint's training stream (if it
        holds as many columns as this run): its ``segment_log_probs`` then follows it as usual."""
        if self._restored_train_state is not None:
            stream = self.restored_train_stream(self._restored_train_state, batch["input"].shape[0])
            if stream is not None:
                self.streams["train"] = stream
            self._restored_train_state = None

    def setup(self, stage: str) -> None:
        """For ``predict`` with a ``prompt``/``prompt_file``: tokenise it (``encode_prompt``)."""
        if stage == "predict" and self.prompt_text is not None:
            self._prompt_ids = self.encode_prompt(self.prompt_text)

    def tokenizer(self) -> Any:
        """The data module's tokenizer, or None (no trainer, or a data module without one)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, "tokenizer", None)

    def detokenize(self, ids: list[int]) -> str:
        """``ids`` as text with the data module's tokenizer (special tokens kept), else the ids."""
        tokenizer = self.tokenizer()
        if tokenizer is None:
            return " ".join(map(str, ids))
        return tokenizer.decode(ids, skip_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of the prompt ``text``: each line's tokens, ``<eos>`` between lines (as the corpus
        stream has them). ``DataError`` naming the option if it holds words outside the vocabulary
        (``<unk>`` written as such is allowed) or leaves no room for ``max_new_tokens``."""
        option = "prompt" if self.hparams.prompt is not None else f"prompt_file {self.hparams.prompt_file}"
        tokenizer = self.tokenizer()
        if tokenizer is None:
            raise DataError(f"{option}: the data module has no tokenizer to encode the prompt text with")
        ids: list[int] = []
        unknown: list[str] = []
        for number, line in enumerate(text.split("\n")):
            encoding = tokenizer.encode(line)
            ids += ([EOS_ID] if number else []) + encoding.ids
            unknown += [
                line[start:end]
                for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)
                if token == UNK_ID and line[start:end] != "<unk>"
            ]
        if unknown:
            words = ", ".join(repr(word) for word in dict.fromkeys(unknown))
            raise DataError(
                f"{option}: words not in the vocabulary: {words} (rephrase, or write <unk> for them)"
            )
        try:
            check_generation_fits(self.model, len(ids), self.hparams.max_new_tokens)
        except ValueError as error:
            raise DataError(f"{option}: {error}") from None
        return ids

    def generate(self, prompt: Tensor, generator: torch.Generator | None = None) -> list[dict[str, Any]]:
        """Continue each row of ``prompt`` ``[B, T_0]`` by ``max_new_tokens`` tokens (``temperature``,
        ``top_k``); one dict per row: ``prompt_ids``, ``generated_ids``, ``generated``
        (the continuation as text)."""
        hparams = self.hparams
        with decoding(self):
            tokens = sample(
                self.model,
                prompt,
                max_new_tokens=hparams.max_new_tokens,
                temperature=hparams.temperature,
                top_k=hparams.top_k,
                generator=generator,
            )
        samples = []
        for row in tokens.tolist():
            prompt_ids, generated_ids = row[: prompt.shape[1]], row[prompt.shape[1] :]
            samples.append(
                {
                    "prompt_ids": prompt_ids,
                    "generated_ids": generated_ids,
                    "generated": self.detokenize(generated_ids),
                }
            )
        return samples

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """``num_samples`` continuations of the prompt (module docstring), written one per line to
        ``predict_output`` or stdout by rank 0; returned as ``generate``'s dicts. The data module
        serves one batch (the test split's first segment), whose first row is the prompt when none is
        given."""
        if self._prompt_ids is not None:
            prompt = torch.tensor([self._prompt_ids], device=self.device)
        else:
            prompt = batch["input"][:1, : self.hparams.prompt_length]
        samples = self.generate(prompt.expand(self.hparams.num_samples, -1))
        if self.trainer.is_global_zero:
            write_lines(
                [" ".join(sample["generated"].splitlines()) for sample in samples],
                self.hparams.predict_output,
            )
        return samples

    def total_steps(self) -> float:
        """Optimiser steps of the run: ``max_steps`` if given, else the Trainer's estimate."""
        if self.hparams.max_steps is not None:
            return float(self.hparams.max_steps)
        return float(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        hparams = self.hparams
        return adam_with_schedule(
            self.parameters(),
            lr=hparams.lr,
            betas=hparams.betas,
            weight_decay=hparams.weight_decay,
            decoupled_weight_decay=True,
            schedule=hparams.schedule,
            warmup_steps=hparams.warmup_steps,
            total_steps=self.total_steps(),
        )
