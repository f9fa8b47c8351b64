"""What the backbone tests share: the attention presets under test and small float64 models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fwp.model import DecoderLM, DecoderLMConfig

PRESETS = ("softmax", "linear", "performer", "dpfp", "delta")
FAST_WEIGHT_PRESETS = PRESETS[1:]
VOCAB = 37


def tiny_lm(attention: Any = "delta", **kwargs: Any) -> DecoderLM:
    """A float64 two-layer ``DecoderLM`` (d_model 16, 2 heads) in eval mode."""
    options = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 24, "attention": attention, **kwargs}
    return DecoderLM(VOCAB, DecoderLMConfig(**options)).double().eval()


def tokens(batch: int = 2, length: int = 11, vocab: int = VOCAB) -> Tensor:
    """Random token ids ``[B, T]``."""
    return torch.randint(0, vocab, (batch, length))
