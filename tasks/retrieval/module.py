"""The retrieval model: one fast-weight (or softmax) attention layer with one head (§6.1 of the paper).

Shapes: keys, values ``[B, L]``; queries ``[B, Q]``; S = ``num_keys``; E = ⌊1.1·2S⌋; d_k = ``d_key``.

- key tokens have a trained embedding ``e(key) ∈ R^E``; values are fixed one-hot vectors ``o(v) ∈ R^S``;
- the slow net reads ``x_t = [o(v_t), e(key_t)]`` and writes key ``k_t = W_k x_t`` (and
  ``β_t = σ(w_β · x_t)`` for the delta rule) with the value ``o(v_t)`` itself;
- a query key is projected ``q = W_q e(query)`` and reads the memory: ``y = attention-read(q) ∈ R^S``;
- loss ``0.5 · ‖o(target) − y‖²`` summed over the S dimensions, averaged over the queries with the
  batch's query weights (a plain mean in training; the official chunked mean in evaluation).

Initialisation as in the official code: ``e`` ~ N(0, 1); ``W_k``, ``W_q`` ~ U(±1/√d_k) (Xavier-uniform for
the softmax model); the biases and the β row keep PyTorch's default U(±1/√fan_in).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwp.attention import AttentionSpec, build_attention
from fwp.model import fast_weight_norm
from fwp.training.monitoring import GradientNormLogging
from fwp.training.optimization import adam_with_schedule
from tasks.retrieval.generator import RetrievalBatch


def key_embedding_size(num_keys: int) -> int:
    """E = ⌊1.1 · 2S⌋, the paper's key embedding size (computed as the official ``int(2S · 1.1)``)."""
    return int((num_keys + num_keys) * 1.1)


def squared_error(output: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``0.5 · ‖one_hot(target) − output‖²`` summed over dims, then ``Σ w · loss / Σ w`` over queries.

    output: ``[B, Q, S]``; target: ``[B, Q]``; weight: ``[B, Q]`` (a boolean mask gives the mean over the
    valid queries)."""
    one_hot = F.one_hot(target, output.shape[-1]).to(output.dtype)
    per_query = 0.5 * (one_hot - output).pow(2).sum(dim=-1)
    weight = weight.to(per_query.dtype)
    return (per_query * weight).sum() / weight.sum().clamp(min=torch.finfo(weight.dtype).tiny)


class RetrievalModel(GradientNormLogging, L.LightningModule):
    """One attention layer trained to retrieve the value last associated with a query key.

    Args:
        num_keys: S (linked from the data module by the CLI).
        attention: registry name or ``{name: ..., options}`` (softmax, linear, performer, dpfp, delta,
            fast_weight).
        d_key: size of keys and queries before the feature map (the paper: 64).
        lr: Adam learning rate (the paper: 1e-3).

    Monitoring (``fwp.training.monitoring``): ``train/grad_norm``, throughput from ``throughput_counts``, and
    ``hp_metric`` = the lowest ``valid/loss`` so far.
    """

    best_metric = "valid/loss"
    best_metric_mode = "min"

    # The arguments that shape the weights or what they compute: with --ckpt_path the run's values must
    # be the checkpoint's (fwp.training.cli); any other argument (decoding, optimisation, dropout) may differ.
    ARCHITECTURE_ARGUMENTS = frozenset(
        {
            "num_keys",
            "attention",
            "d_key",
        }
    )

    def __init__(
        self,
        num_keys: int = 20,
        attention: AttentionSpec = "delta",
        d_key: int = 64,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        for name, value in (("num_keys", num_keys), ("d_key", d_key)):
            if value < 1:
                raise ValueError(f"RetrievalModel: {name} must be >= 1, got {name}={value}")
        self.save_hyperparameters()
        embedding_size = key_embedding_size(num_keys)
        self.key_embedding = nn.Embedding(num_keys, embedding_size)
        self.attention = build_attention(attention, d_key)
        self.write_projection = nn.Linear(num_keys + embedding_size, d_key + 1)
        self.query_projection = nn.Linear(embedding_size, d_key)
        self.reset_projections()

    def reset_projections(self) -> None:
        """The official initialisation of ``W_k`` (the first ``d_key`` rows of ``write_projection``) and
        ``W_q``: U(±1/√d_key), or Xavier-uniform for softmax attention (module docstring)."""
        w_k = self.write_projection.weight[: self.hparams.d_key]
        with torch.no_grad():
            for weight in (w_k, self.query_projection.weight):
                if self.attention.is_fast_weight:
                    bound = 1.0 / math.sqrt(self.hparams.d_key)
                    nn.init.uniform_(weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(weight)

    def forward(self, keys: Tensor, values: Tensor, queries: Tensor) -> tuple[Tensor, object]:
        """Write the ``L`` pairs, then read every query: returns ``[B, Q, S]`` and the memory state."""
        S = self.hparams.num_keys
        value_codes = F.one_hot(values, S).to(self.key_embedding.weight.dtype)
        slow_input = torch.cat([value_codes, self.key_embedding(keys)], dim=-1)
        projected = self.write_projection(slow_input)
        k = projected[..., :-1].unsqueeze(1)
        beta = torch.sigmoid(projected[..., -1]).unsqueeze(1) if self.attention.uses_beta else None
        v = value_codes.unsqueeze(1)
        _, state = self.attention(k, k, v, beta, causal=True)
        q = self.query_projection(self.key_embedding(queries)).unsqueeze(1)
        return self.attention.read(q, state).squeeze(1), state

    def _loss(self, batch: RetrievalBatch) -> tuple[Tensor, Tensor, object]:
        output, state = self(batch.keys, batch.values, batch.queries)
        loss = squared_error(output, batch.targets, batch.query_weight)
        return loss, output, state

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> Tensor:
        loss, _, state = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        norm = fast_weight_norm(state)
        if norm is not None:
            self.log("train/fast_weight_norm", norm)
        return loss

    def throughput_counts(self, batch: RetrievalBatch) -> tuple[int, int]:
        """Sequences and key-value pairs written of ``batch``, for ``TaskThroughput``."""
        return batch.keys.shape[0], batch.keys.numel()

    def _evaluate(self, batch: RetrievalBatch, prefix: str) -> Tensor:
        loss, output, _ = self._loss(batch)
        correct = (output.argmax(dim=-1) == batch.targets) & batch.query_mask
        accuracy = correct.sum() / batch.query_mask.sum()
        self.log(f"{prefix}/loss", loss, prog_bar=True)
        self.log(f"{prefix}/accuracy", accuracy, prog_bar=True)
        return loss

    def validation_step(self, batch: RetrievalBatch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "valid")

    def test_step(self, batch: RetrievalBatch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: RetrievalBatch, batch_idx: int) -> dict[str, Tensor]:
        output, _ = self(batch.keys, batch.values, batch.queries)
        return {"prediction": output.argmax(dim=-1), "target": batch.targets, "mask": batch.query_mask}

    def configure_optimizers(self) -> dict[str, Any]:
        return adam_with_schedule(self.parameters(), lr=self.hparams.lr)
