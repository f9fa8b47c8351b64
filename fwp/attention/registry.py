"""Attention registry: a name (plus options) or a ``class_path`` → an ``AttentionCore``.

Specs: ``"delta"``; ``{"name": "performer", "m": 64}``; ``{"class_path": "fwp.attention.FastWeightAttention",
"init_args": {...}}``. A registered name is a factory plus preset options; the spec's options override
the preset's. The built-in presets are the paper's systems:

| name | feature map | normalisation | rule |
|---|---|---|---|
| ``softmax`` | — | softmax | — |
| ``linear`` | elu + 1 | denominator | sum |
| ``performer`` | FAVOR+ (``m = 16``, Ω redrawn in training, features + 1e-4) | denominator | sum |
| ``dpfp`` | DPFP ν = 2 | denominator | sum |
| ``delta`` | DPFP ν = 2 | sum | delta (β) |
| ``fast_weight`` | any combination, defaults = ``delta`` | | |
| ``fwm`` | tanh (or DPFP) | LayerNorm of the read | FWM (β, rescaled ``W``; causal only) |

and the DeltaNet family (docs/attention.md), each with a short convolution or decay as marked and a
gated RMSNorm of the output:

| name | feature map | short conv | rule | decay |
|---|---|---|---|---|
| ``deltanet`` | l2 (after the convolution's SiLU) | 4 | delta (β = sigmoid) | — |
| ``gated_deltanet`` | l2 (after the convolution's SiLU) | 4 | gated delta | ``−A·softplus(a_t + b)`` |
| ``gla`` | identity | — | gated sum | ``−A·softplus(a_t + b)`` |
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fwp.attention.base import AttentionCore, AttentionSpec
from fwp.attention.fast_weight import FastWeightAttention
from fwp.attention.fwm import FastWeightMemoryAttention
from fwp.attention.softmax import SoftmaxAttention


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., AttentionCore]
    preset: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}


def _accepted_options(factory: Callable[..., AttentionCore]) -> list[str] | None:
    """The keyword options ``factory`` accepts besides ``d_head``; None if it takes ``**kwargs``."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return sorted(
        p.name
        for p in parameters
        if p.name != "d_head"
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def _check_option_names(
    attention: str, factory: Callable[..., AttentionCore], options: dict[str, Any]
) -> None:
    if "d_head" in options:
        raise ValueError(
            f"attention {attention!r}: option 'd_head' is set by the module, got d_head={options['d_head']!r}"
        )
    accepted = _accepted_options(factory)
    if accepted is None:
        return
    for name, value in options.items():
        if name not in accepted:
            raise ValueError(
                f"attention {attention!r}: unknown option {name!r} (value {value!r}); "
                f"options: {', '.join(accepted)}"
            )


def _construct(
    attention: str, factory: Callable[..., AttentionCore], d_head: int, options: dict[str, Any]
) -> AttentionCore:
    """``factory(d_head=d_head, **options)``, with bad options re-raised as a ``ValueError`` naming
    the attention."""
    _check_option_names(attention, factory, options)
    try:
        core = factory(d_head=d_head, **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"attention {attention!r} with options {options!r}: {error}") from error
    if not isinstance(core, AttentionCore):
        raise ValueError(
            f"attention {attention!r}: the factory returned {type(core).__name__}, not an AttentionCore"
        )
    return core


def register_attention(name: str, factory: Callable[..., AttentionCore], **preset: Any) -> None:
    """Register ``factory`` (called as ``factory(d_head=..., **options)``) under ``name``, with ``preset``
    options as defaults. Re-registering a name is an error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"attention name must be a non-empty string, got name={name!r}")
    if name in _REGISTRY:
        raise ValueError(f"attention {name!r} is already registered")
    _check_option_names(name, factory, preset)
    _REGISTRY[name] = _Entry(factory, dict(preset))


def available_attentions() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def _import_class(class_path: str) -> type[AttentionCore]:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"attention class_path={class_path!r} cannot be imported: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, AttentionCore)):
        raise ValueError(f"attention class_path={class_path!r} is not an AttentionCore subclass")
    return cls


def build_attention(spec: AttentionSpec, d_head: int) -> AttentionCore:
    """The attention core described by ``spec`` (see the module docstring) for heads of size ``d_head``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"attention spec must be a name or a dict, got {type(spec).__name__}: {spec!r}")
    if "class_path" in spec:
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra:
            raise ValueError(f"attention spec with class_path takes only init_args, got extra keys {extra}")
        class_path = spec["class_path"]
        entry = _Entry(_import_class(class_path))
        options = _resolved_options(class_path, entry, dict(spec.get("init_args") or {}))
        return _construct(class_path, entry.factory, d_head, options)
    if "name" not in spec:
        raise ValueError(f"attention spec dict needs a 'name' or a 'class_path', got keys {sorted(spec)}")
    options = dict(spec)
    name = options.pop("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(available_attentions())}")
    entry = _REGISTRY[name]
    return _construct(name, entry.factory, d_head, _resolved_options(name, entry, options))


def _resolved_options(attention: str, entry: _Entry, options: dict[str, Any]) -> dict[str, Any]:
    """The preset's options overridden by the user's ``options``, without the preset defaults the
    resolved system does not use (``{name: delta, feature_map: elu}`` drops the preset's ``nu``); a
    ValueError naming the option and the system for an option the user gave that it does not use
    (``{name: linear, nu: 3}``: elu + 1 has no ``nu``). A factory states what it does not use with an
    ``unused_options(options) -> {option: reason}`` callable; without one every option counts as used."""
    merged = {**entry.preset, **options}
    unused_options = getattr(entry.factory, "unused_options", None)
    if unused_options is None:
        return merged
    unused = unused_options(merged)
    for option, reason in unused.items():
        if option in options:
            raise ValueError(
                f"attention {attention!r}: option {option}={options[option]!r} is not used by this system "
                f"({reason}); remove it or choose a system that uses it"
            )
    return {option: value for option, value in merged.items() if option not in unused}


register_attention("softmax", SoftmaxAttention)
register_attention("linear", FastWeightAttention, feature_map="elu", normalization="denominator", rule="sum")
register_attention(
    "performer",
    FastWeightAttention,
    feature_map="favor",
    m=16,
    redraw="train",
    feature_eps=1e-4,
    normalization="denominator",
    rule="sum",
)
register_attention(
    "dpfp", FastWeightAttention, feature_map="dpfp", nu=2, normalization="denominator", rule="sum"
)
register_attention("delta", FastWeightAttention, feature_map="dpfp", nu=2, normalization="sum", rule="delta")
register_attention("fast_weight", FastWeightAttention)
DELTANET = {"feature_map": "l2", "normalization": "none", "short_conv": 4, "output_gate": True}
register_attention("deltanet", FastWeightAttention, **DELTANET, rule="delta")
register_attention("gated_deltanet", FastWeightAttention, **DELTANET, rule="delta", decay=True)
register_attention(
    "gla",
    FastWeightAttention,
    feature_map="identity",
    normalization="none",
    rule="sum",
    decay=True,
    output_gate=True,
)
register_attention("fwm", FastWeightMemoryAttention)
