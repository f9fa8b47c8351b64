"""Typed backbone configurations: checked once when built, then passed down whole (task → backbone →
stack → block → the attention registry).

A backbone config (``DecoderLMConfig``, ``EncoderDecoderConfig``) may name a ``preset`` (a key of its
``PRESETS``: the paper's settings, the one place their values are written) and any fields to set. A
field left ``None`` takes the preset's value, else the class's ``DEFAULTS`` value; a field given wins
over both. In YAML (``backbone:`` of a task)::

    backbone:
      preset: wt103-small
      attention: {name: delta, nu: 2}    # overrides; every other field from the preset

and on the command line ``--model.init_args.backbone.d_model 256``. Three fields have a meaningful
``None``, which a preset that sets them overrides: ``d_head`` (``d_model // n_heads``; the ``wt103-*``
presets set the paper's 16 and 32: give ``d_head`` with another ``d_model``), ``activation_dropout``
(the residual ``dropout``; the WMT14 presets set 0) and ``adaptive_cutoffs`` (a plain softmax; ``[]``
turns off the adaptive softmax of a ``wt103-*`` preset). After construction every other field holds
its value, so ``type(config)(**config.as_dict())`` rebuilds the same config (checkpoints store
``as_dict()``).

``BlockConfig`` is what every ``TransformerBlock`` of a backbone shares (sizes, dropout, activation,
norm); a backbone config builds it as ``config.block``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import torch.nn.functional as F

from fwp.attention import AttentionSpec
from fwp.model.initialization import INITS, Init
from fwp.model.positions import POSITIONALS, Positional

Norm = Literal["pre", "post"]
Activation = Literal["relu", "gelu"]
NORMS = ("pre", "post")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    """A ValueError naming ``option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {option}={value!r}")


def check_at_least(option: str, value: int | float, minimum: int | float) -> None:
    """A ValueError naming ``option`` unless ``value >= minimum``."""
    if not value >= minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {option}={value}")


def check_rate(option: str, value: float) -> None:
    """A ValueError naming ``option`` unless ``value`` is a dropout rate in ``[0, 1)``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{option} must be in [0, 1), got {option}={value}")


@dataclass(frozen=True)
class BlockConfig:
    """What every Transformer block of a backbone shares.

    ``d_model → d_ff → d_model`` feed-forward with ``activation``; ``n_heads`` heads of ``d_head``
    (None: ``d_model // n_heads``); residual ``dropout`` in ``[0, 1)``, ``activation_dropout`` on the
    feed-forward hidden units (None: ``dropout``); ``norm`` ``post`` (``x ← LN(x + f(x))``) or ``pre``
    (``x ← x + f(LN(x))``).
    """

    d_model: int
    n_heads: int
    d_ff: int
    d_head: int | None = None
    dropout: float = 0.1
    activation_dropout: float | None = None
    activation: Activation = "relu"
    norm: Norm = "post"

    def __post_init__(self) -> None:
        for option in ("d_model", "n_heads", "d_ff"):
            check_at_least(option, getattr(self, option), 1)
        if self.d_head is not None:
            check_at_least("d_head", self.d_head, 1)
        check_rate("dropout", self.dropout)
        if self.activation_dropout is not None:
            check_rate("activation_dropout", self.activation_dropout)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("norm", self.norm, NORMS)


BLOCK_FIELDS = tuple(field.name for field in fields(BlockConfig))
# Fields that only act in training: a checkpoint may be evaluated or fine-tuned with other values.
TRAINING_FIELDS = ("dropout", "activation_dropout", "init")


@dataclass(frozen=True)
class BackboneConfig:
    """A preset and field overrides, resolved and checked in ``__post_init__`` (module docstring)."""

    preset: str | None = None
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    # Names the fields had as flat task arguments before the backbone config (checkpoints of then).
    LEGACY_NAMES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in self.PRESETS:
            raise ValueError(
                f"backbone ({type(self).__name__}): preset must be one of {list(self.PRESETS)}, got "
                f"preset={self.preset!r}"
            )
        preset = self.PRESETS.get(self.preset, {})
        for name in self.field_names():
            if getattr(self, name) is None:
                value = preset.get(name, self.DEFAULTS.get(name))
                object.__setattr__(self, name, list(value) if isinstance(value, tuple) else value)
        try:
            object.__setattr__(
                self, "block", BlockConfig(**{name: getattr(self, name) for name in BLOCK_FIELDS})
            )
            self.check()
        except ValueError as error:
            raise ValueError(f"backbone ({type(self).__name__}): {error}") from None

    def check(self) -> None:
        """A ValueError naming the first invalid field beyond the block's (subclasses)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The configurable fields, ``preset`` excluded."""
        return tuple(field.name for field in fields(cls) if field.name != "preset")

    @classmethod
    def architecture_fields(cls, prefix: str = "backbone.") -> frozenset[str]:
        """``prefix`` + every field that shapes the weights or what they compute: all but ``preset``
        and the ones that only act in training (dropout rates, initialisation)."""
        return frozenset(prefix + name for name in cls.field_names() if name not in TRAINING_FIELDS)

    @classmethod
    def of(cls, value: BackboneConfig | dict[str, Any] | None) -> BackboneConfig:
        """``value`` as a config of this class: None → the defaults, a dict (a checkpoint's saved
        ``as_dict()``) → built from it."""
        if value is None:
            return cls()
        if isinstance(value, dict):
            return cls(**value)
        if not isinstance(value, cls):
            raise TypeError(f"backbone must be a {cls.__name__}, got {type(value).__name__}")
        return value

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (what checkpoints store as the task's ``backbone``)."""
        return asdict(self)

    @classmethod
    def nest_legacy_hyperparameters(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """A task's hyperparameters saved before the backbone config (its fields as flat arguments,
        under their ``LEGACY_NAMES``) with those fields moved under ``backbone``; others unchanged."""
        if "backbone" in hparams:
            return hparams
        names = {cls.LEGACY_NAMES.get(name, name): name for name in cls.field_names()}
        if not names.keys() & hparams.keys():
            return hparams
        nested = {key: value for key, value in hparams.items() if key not in names}
        nested["backbone"] = {names[key]: value for key, value in hparams.items() if key in names}
        return nested


def check_positions(positional: str, max_positions: int) -> None:
    """A ValueError unless ``positional`` is known and ``max_positions >= 1``."""
    check_choice("positional", positional, POSITIONALS)
    check_at_least("max_positions", max_positions, 1)


WT103_SMALL = {
    "d_model": 128,
    "n_layers": 16,
    "n_heads": 8,
    "d_head": 16,
    "d_ff": 2048,
    "dropout": 0.1,
    "positional": "sinusoidal",
    "norm": "post",
    "init": "txl",
    "tie_embeddings": True,
    "adaptive_cutoffs": (20000, 40000, 200000),
    "adaptive_div_value": 1.0,
}


@dataclass(frozen=True)
class DecoderLMConfig(BackboneConfig):
    """The decoder-only language model (``fwp.model.DecoderLM``); every field None: preset, else
    ``DEFAULTS`` (module docstring).

    Args:
        preset: the paper's setting to start from: ``synthetic`` (2 layers, d_model 64, 4 heads, d_ff
            256, no dropout, tied embeddings), ``wt103-small`` (16 layers, d_model 128, 8 heads of 16,
            d_ff 2048, dropout 0.1, Transformer-XL init, tied adaptive input and softmax with cutoffs
            20k/40k/200k), ``wt103-medium`` (as small with d_model 256, heads of 32).
        d_model: model width.
        n_layers: number of blocks.
        n_heads: attention heads per block.
        d_head: size of each head (None: d_model // n_heads).
        d_ff: feed-forward hidden units.
        attention: registry spec of every layer's attention (``delta``, ``{name: performer, m: 16}``, ...).
        dropout: residual, embedding and output dropout in [0, 1).
        activation_dropout: dropout of the feed-forward hidden units (None: dropout).
        activation: feed-forward activation, relu or gelu.
        norm: post (the paper's) or pre LayerNorm.
        positional: none, sinusoidal or learned positions.
        max_positions: positions of a learned table.
        tie_embeddings: share the input embedding with the output layer.
        adaptive_cutoffs: adaptive input and softmax cluster boundaries (None or []: a plain softmax).
        adaptive_div_value: cluster width divisor (>= 1) of the adaptive softmax.
        init: torch (PyTorch's defaults) or txl (Transformer-XL's, the paper's).
    """

    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    attention: AttentionSpec | None = None
    dropout: float | None = None
    activation_dropout: float | None = None
    activation: Activation | None = None
    norm: Norm | None = None
    positional: Positional | None = None
    max_positions: int | None = None
    tie_embeddings: bool | None = None
    adaptive_cutoffs: list[int] | None = None
    adaptive_div_value: float | None = None
    init: Init | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "synthetic": {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 256,
            "dropout": 0.0,
            "norm": "post",
            "tie_embeddings": True,
        },
        "wt103-small": WT103_SMALL,
        "wt103-medium": {**WT103_SMALL, "d_model": 256, "d_head": 32},
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "d_model": 128,
        "n_layers": 2,
        "n_heads": 4,
        "d_ff": 512,
        "attention": "delta",
        "dropout": 0.1,
        "activation": "relu",
        "norm": "post",
        "positional": "sinusoidal",
        "max_positions": 4096,
        "tie_embeddings": False,
        "adaptive_div_value": 1.0,
        "init": "torch",
    }

    def check(self) -> None:
        check_at_least("n_layers", self.n_layers, 1)
        check_positions(self.positional, self.max_positions)
        check_choice("init", self.init, INITS)
        check_at_least("adaptive_div_value", self.adaptive_div_value, 1.0)
        if self.adaptive_cutoffs is not None and not list(self.adaptive_cutoffs):
            object.__setattr__(self, "adaptive_cutoffs", None)


WMT14_BASE = {
    "d_model": 512,
    "n_encoder_layers": 6,
    "n_decoder_layers": 6,
    "n_heads": 8,
    "d_ff": 2048,
    "dropout": 0.1,
    "activation_dropout": 0.0,
    "norm": "post",
    "share_embeddings": True,
}


@dataclass(frozen=True)
class EncoderDecoderConfig(BackboneConfig):
    """The encoder-decoder Transformer (``fwp.model.EncoderDecoder``); every field None: preset, else
    ``DEFAULTS`` (module docstring).

    Args:
        preset: the paper's setting to start from: ``synthetic`` (2+2 layers, d_model 64, 4 heads, d_ff
            256, dropout 0.1), ``wmt14-base`` (6+6 layers, d_model 512, 8 heads, d_ff 2048, dropout 0.1,
            activation_dropout 0), ``wmt14-big`` (d_model 1024, 16 heads, d_ff 4096, dropout 0.3).
        d_model: model width.
        n_encoder_layers: encoder blocks.
        n_decoder_layers: decoder blocks.
        n_heads: attention heads per block.
        d_head: size of each head (None: d_model // n_heads).
        d_ff: feed-forward hidden units.
        encoder_attention: registry spec of the encoder's bidirectional self-attention (softmax or a
            sum-rule core).
        decoder_attention: registry spec of the decoder's causal self-attention (any core).
        cross_attention: registry spec of the encoder-decoder attention.
        dropout: residual, embedding and attention dropout in [0, 1).
        activation_dropout: dropout of the feed-forward hidden units (None: dropout).
        activation: feed-forward activation, relu or gelu.
        norm: post (Vaswani et al.'s) or pre LayerNorm.
        positional: none, sinusoidal or learned positions.
        max_positions: positions of a learned table; decoding stops before it.
        share_embeddings: one embedding for source, target and the output layer.
    """

    d_model: int | None = None
    n_encoder_layers: int | None = None
    n_decoder_layers: int | None = None
    n_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    encoder_attention: AttentionSpec | None = None
    decoder_attention: AttentionSpec | None = None
    cross_attention: AttentionSpec | None = None
    dropout: float | None = None
    activation_dropout: float | None = None
    activation: Activation | None = None
    norm: Norm | None = None
    positional: Positional | None = None
    max_positions: int | None = None
    share_embeddings: bool | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "synthetic": {
            "d_model": 64,
            "n_encoder_layers": 2,
            "n_decoder_layers": 2,
            "n_heads": 4,
            "d_ff": 256,
            "dropout": 0.1,
        },
        "wmt14-base": WMT14_BASE,
        "wmt14-big": {**WMT14_BASE, "d_model": 1024, "n_heads": 16, "d_ff": 4096, "dropout": 0.3},
    }
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "d_model": 512,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
        "n_heads": 8,
        "d_ff": 2048,
        "encoder_attention": "softmax",
        "decoder_attention": "softmax",
        "cross_attention": "softmax",
        "dropout": 0.1,
        "activation": "relu",
        "norm": "post",
        "positional": "sinusoidal",
        "max_positions": 1024,
        "share_embeddings": True,
    }
    LEGACY_NAMES: ClassVar[dict[str, str]] = {"max_positions": "position_limit"}

    def check(self) -> None:
        check_at_least("n_encoder_layers", self.n_encoder_layers, 1)
        check_at_least("n_decoder_layers", self.n_decoder_layers, 1)
        check_positions(self.positional, self.max_positions)
