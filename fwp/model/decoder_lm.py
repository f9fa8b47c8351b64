"""Decoder-only language model: tokens → causal Transformer stack → next-token distribution.

``forward(tokens [B, T], *, states, position_offset)`` runs the stack over the tokens, continuing
``states`` (one per layer, as returned by the previous call) — so the same call serves a whole
segment (parallel), the next segment of a stream (segment carry, ``position_offset`` = tokens seen
before) and generation one token at a time (step mode). It returns the logits ``[B, T, V]``, or with an
adaptive softmax (``adaptive_cutoffs``) the final hidden states ``[B, T, d_model]``; ``log_probs`` and
``target_log_probs`` turn either into float32 log-probabilities. ``forward(tokens [1, T], cu_seqlens=c)``
runs ``N`` packed sequences (offsets ``c`` ``[N + 1]``) as if each ran alone: positions restart at every
sequence and every layer's state holds one row per sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwp.model.adaptive import (
    LEGACY_SOFTMAX_KEY,
    AdaptiveInput,
    AdaptiveLogSoftmax,
    adaptive_embedding,
    check_cutoffs,
)
from fwp.model.config import DecoderLMConfig
from fwp.model.initialization import transformer_xl_init
from fwp.model.stack import InputEncoding, TransformerStack, token_embedding
from fwp.model.states import export_fast_weights, import_fast_weights, keep
from fwp.training.checkpointing import CheckpointLoadError


def check_tokens(name: str, tokens: Tensor) -> None:
    """A ValueError unless ``tokens`` is an integer tensor ``[B, T]``."""
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor [B, T], got {tokens.dtype} {tuple(tokens.shape)}")


class DecoderLM(nn.Module):
    """Causal Transformer language model over a vocabulary of ``vocab_size`` tokens, shaped by
    ``config`` (``DecoderLMConfig``; None: its defaults).

    ``config.attention`` is any registry spec (``"delta"``, ``{"name": "performer", "m": 64}``, …), the
    same for every layer. ``tie_embeddings`` shares the input embedding with the output layer (with an
    adaptive softmax: the cluster tables and projections). ``adaptive_cutoffs`` (e.g. the paper's
    ``[20000, 40000, 200000]``) switch to adaptive input + Transformer-XL's adaptive softmax
    (``AdaptiveLogSoftmax``) with cluster widths ``d_model / adaptive_div_value^i``. ``init``: ``torch``
    (PyTorch's defaults; embeddings N(0, 1/d_model)) or ``txl`` (Transformer-XL's, the paper's:
    ``fwp.model.initialization.transformer_xl_init``).
    """

    def __init__(self, vocab_size: int, config: DecoderLMConfig | None = None) -> None:
        super().__init__()
        config = DecoderLMConfig.of(config)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got vocab_size={vocab_size}")
        self.config = config
        self.vocab_size = vocab_size
        self.tie_embeddings = config.tie_embeddings
        d_model = config.d_model
        self.adaptive_softmax: AdaptiveLogSoftmax | None = None
        if config.adaptive_cutoffs is not None:
            cutoffs = check_cutoffs(config.adaptive_cutoffs, vocab_size)
            divisor = config.adaptive_div_value
            self.adaptive_softmax = AdaptiveLogSoftmax(vocab_size, d_model, cutoffs, divisor)
            self.boundaries = [0, *cutoffs, vocab_size]
            if not config.tie_embeddings:
                self.adaptive_input = AdaptiveInput(vocab_size, d_model, cutoffs, divisor)
        else:
            self.embedding = token_embedding(vocab_size, d_model)
            if not config.tie_embeddings:
                self.output = nn.Linear(d_model, vocab_size, bias=False)
        self.input_encoding = InputEncoding(
            d_model, positional=config.positional, max_positions=config.max_positions, dropout=config.dropout
        )
        self.stack = TransformerStack(config.block, config.n_layers, config.attention, causal=True)
        self.output_dropout = nn.Dropout(config.dropout)
        if config.init == "txl":
            transformer_xl_init(self)
        self.register_load_state_dict_pre_hook(refuse_legacy_adaptive_softmax)

    @property
    def adaptive(self) -> bool:
        """True with an adaptive softmax: ``forward`` then returns hidden states, not logits."""
        return self.adaptive_softmax is not None

    @property
    def bounded_state(self) -> bool:
        """True when every layer is a fast-weight layer (state size independent of the length)."""
        return self.stack.bounded_state

    def export_states(
        self, states: list, transform: Callable[[Tensor], Tensor] = keep
    ) -> dict[str, list[Tensor | None]]:
        """The layers' fast-weight states returned by ``forward`` in their saved form
        (``fwp.model.states.export_fast_weights``: ``{"W": [...], "z": [...]}``, one entry per layer,
        each tensor through ``transform``), for a checkpoint."""
        return export_fast_weights(states, transform)

    def import_states(
        self, saved: dict[str, list[Tensor | None]], transform: Callable[[Tensor], Tensor] = keep
    ) -> list:
        """States for ``forward`` from their saved form (``export_states``), each tensor through
        ``transform``; a ValueError unless it holds one state per layer."""
        if len(saved["W"]) != len(self.stack.blocks):
            raise ValueError(
                f"saved states hold {len(saved['W'])} layers, the model has {len(self.stack.blocks)}"
            )
        return import_fast_weights(saved, transform)

    def embed(self, tokens: Tensor) -> Tensor:
        """Token embeddings ``[B, T]`` → ``[B, T, d_model]`` (before scaling and positions)."""
        if self.adaptive_softmax is None:
            return self.embedding(tokens)
        if self.tie_embeddings:
            return adaptive_embedding(tokens, self.boundaries, self.adaptive_softmax.clusters())
        return self.adaptive_input(tokens)

    def forward(
        self,
        tokens: Tensor,
        *,
        states: list | None = None,
        position_offset: int = 0,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        """tokens ``[B, T]`` → logits ``[B, T, V]`` (hidden ``[B, T, d_model]`` when adaptive) and one
        state per layer; ``states`` from a previous call are continued, positions start at
        ``position_offset``; ``cu_seqlens`` ``[N + 1]``: ``tokens`` ``[1, T]`` are ``N`` packed
        sequences (module docstring)."""
        hidden, states = self.hidden_states(
            tokens, states=states, position_offset=position_offset, cu_seqlens=cu_seqlens
        )
        return self.output_scores(hidden), states

    def hidden_states(
        self,
        tokens: Tensor,
        *,
        states: list | None = None,
        position_offset: int = 0,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        """``forward`` without the output layer: tokens ``[B, T]`` → the last hidden states ``[B, T,
        d_model]`` (after the output dropout) and one state per layer."""
        check_tokens("tokens", tokens)
        x = self.input_encoding(self.embed(tokens), position_offset, cu_seqlens)
        x, states = self.stack(x, states=states, cu_seqlens=cu_seqlens)
        return self.output_dropout(x), states

    def output_scores(self, hidden: Tensor) -> Tensor:
        """Hidden states ``[..., d_model]`` → logits ``[..., V]``; with an adaptive softmax the hidden
        states themselves (both are what ``log_probs`` and ``target_log_probs`` take). Scoring a subset
        of positions (``output_scores(hidden[mask])``) skips the vocabulary projection of the others."""
        if self.adaptive_softmax is not None:
            return hidden
        if self.tie_embeddings:
            return F.linear(hidden, self.embedding.weight)
        return self.output(hidden)

    def adaptive_hidden(self, output: Tensor) -> Tensor:
        """Hidden states ``[..., d_model]`` → ``[N, d_model]`` in the adaptive softmax's own dtype (its
        log-softmax then runs in float32 even under bf16 autocast, which is switched off around it)."""
        return output.reshape(-1, output.shape[-1]).to(self.adaptive_softmax.cluster_weight.dtype)

    def log_probs(self, output: Tensor) -> Tensor:
        """Log-distribution over the vocabulary ``[..., V]`` (float32, float64 for a float64 model)."""
        if self.adaptive_softmax is None:
            return torch.log_softmax(output.float(), dim=-1)
        hidden = self.adaptive_hidden(output)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            log_probs = self.adaptive_softmax.log_prob(hidden)
        return log_probs.view(*output.shape[:-1], self.vocab_size)

    def target_log_probs(self, output: Tensor, targets: Tensor) -> Tensor:
        """``log p(target)`` ``[B, T]`` (float32, float64 for a float64 model) for targets ``[B, T]``."""
        if self.adaptive_softmax is None:
            logits = output.float().reshape(-1, self.vocab_size)
            return -F.cross_entropy(logits, targets.reshape(-1), reduction="none").view(targets.shape)
        hidden = self.adaptive_hidden(output)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            result = self.adaptive_softmax.target_log_prob(hidden, targets.reshape(-1))
        return result.view(targets.shape)


def refuse_legacy_adaptive_softmax(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """A ``CheckpointLoadError`` for weights of the earlier adaptive-softmax layout
    (``nn.AdaptiveLogSoftmaxWithLoss``: d×d tail projections, no output bias), which has no exact
    counterpart in Transformer-XL's layout used now."""
    if prefix + LEGACY_SOFTMAX_KEY in state_dict:
        raise CheckpointLoadError(
            f"the checkpoint's adaptive softmax ({prefix}{LEGACY_SOFTMAX_KEY}, ...) has the layout of "
            "nn.AdaptiveLogSoftmaxWithLoss, replaced by Transformer-XL's (tied tables with an output bias, "
            "cluster_weight/cluster_bias, no tail projections); it cannot be converted: retrain the model"
        )
