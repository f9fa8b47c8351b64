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

The DeltaNet family (``deltanet``, ``gated_deltanet``, ``gla``; docs/attention.md) adds parts that
``MultiHeadAttention`` builds around its core; this model builds them itself, for its one head, and reads
a query as the **read-only step after the sequence**: its token is ``x_q = [0, e(query)]`` (no value), so
``q = W_q x_q`` is the paper systems' ``W_q e(query)``. Each part:

- short convolution (kernel K, + SiLU) on the channels ``[q̃_t, k̃_t] = [W_q x_t, W_k x_t]`` (``2·d_k``;
  ``W_q`` then reads the whole token ``[S + E → d_k]``, since write tokens have a q too): the writes
  run it over the L tokens; every query runs it as one step continuing the writes' last ``K − 1``
  inputs (``FastWeightState.conv``), each query independently (all in parallel, as ``Q`` one-step
  continuations of the same state). A query's k is not used (it writes nothing). The value is not
  convolved: it stays ``o(v_t)``, as in the paper.
- decay ``log α_t = −A · softplus(x_t w_a + b)`` from the write tokens; a query does not decay the memory.
- output gate ``y ← RMSNorm(y) ⊙ silu(W_g e(query))`` (RMSNorm over the S outputs, ``W_g: [E → S]``: the
  query token's value part is zero, so ``W_g x_q`` needs only its ``E`` columns); no output projection
  and no 1/√d_k scale, as for the paper systems.
- ``allow_negative_eigenvalues``: ``β_t = 2·σ(w_β · x_t)``.

The paper systems build none of these: their parameters, initialisation and random draws are as before.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwp.attention import AttentionSpec, AttentionState, build_attention
from fwp.attention.parametrisation import GatedDeltaNetDecay, GatedOutputNorm, ShortConvolution
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
        token_size = num_keys + embedding_size
        self.write_projection = nn.Linear(token_size, d_key + 1)
        convolved = self.attention.short_conv > 0
        self.query_projection = nn.Linear(token_size if convolved else embedding_size, d_key)
        self.reset_projections()
        # the DeltaNet family's parts (module docstring), built after the paper's parameters
        self.convolution = ShortConvolution(2 * d_key, self.attention.short_conv) if convolved else None
        self.decay = GatedDeltaNetDecay(token_size, 1) if self.attention.decay else None
        gate = self.attention.output_gate
        self.output_norm = GatedOutputNorm(embedding_size, 1, num_keys) if gate else None
        self.attention.in_layer = True  # this model builds every part of AttentionCore.layer_parts

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

    def forward(self, keys: Tensor, values: Tensor, queries: Tensor) -> tuple[Tensor, AttentionState]:
        """Write the ``L`` pairs, then read every query: returns ``[B, Q, S]`` and the memory state."""
        S = self.hparams.num_keys
        value_codes = F.one_hot(values, S).to(self.key_embedding.weight.dtype)
        write_tokens = torch.cat([value_codes, self.key_embedding(keys)], dim=-1)  # x_t [B, L, S + E]
        projected = self.write_projection(write_tokens)
        k, beta = projected[..., :-1], None
        if self.attention.uses_beta:
            beta = torch.sigmoid(projected[..., -1]).unsqueeze(1) * self.attention.beta_scale
        past = None
        if self.convolution is not None:
            convolved, past = self.convolution(torch.cat([self.query_projection(write_tokens), k], dim=-1))
            k = convolved[..., self.hparams.d_key :]
        gated = {} if self.decay is None else {"log_decay": self.decay(write_tokens)}
        k = k.unsqueeze(1)
        _, state = self.attention(k, k, value_codes.unsqueeze(1), beta, causal=True, **gated)
        if past is not None:
            state = replace(state, conv=past)
        return self.read(queries, state), state

    def read(self, queries: Tensor, state: AttentionState) -> Tensor:
        """Every query ``[B, Q]`` as the read-only step after the writes of ``state``, each independently
        (module docstring): ``[B, Q, S]``."""
        embedded = self.key_embedding(queries)  # [B, Q, E]
        if self.convolution is None:
            q = self.query_projection(embedded)
        else:
            q = self.query_step(embedded, state.conv)
        y = self.attention.read(q.unsqueeze(1), state)  # [B, 1, Q, S]
        if self.output_norm is not None:
            y = self.output_norm(y, embedded)
        return y.squeeze(1)

    def query_step(self, embedded: Tensor, past: Tensor) -> Tensor:
        """The convolved q of each query token ``x_q = [0, e(query)]`` (``embedded``: ``[B, Q, E]``) as
        one step after the writes' last convolution inputs ``past`` ``[B, K − 1, 2·d_k]``: ``[B, Q, d_k]``.
        The ``Q`` steps are folded into the batch, so each continues the same ``past``."""
        B, Q, _ = embedded.shape
        tokens = torch.cat([embedded.new_zeros(B, Q, self.hparams.num_keys), embedded], dim=-1)
        channels = torch.cat([self.query_projection(tokens), self.write_projection(tokens)[..., :-1]], dim=-1)
        steps, _ = self.convolution(channels.reshape(B * Q, 1, -1), past.repeat_interleave(Q, dim=0))
        return steps.view(B, Q, -1)[..., : self.hparams.d_key]

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
