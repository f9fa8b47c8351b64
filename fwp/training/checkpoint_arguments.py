"""A checkpoint's saved model arguments against the ones a user gives with ``--ckpt_path``: which are
architecture arguments (``ARCHITECTURE_ARGUMENTS``, dotted paths into the backbone config), which
conflict, how old flat hyperparameters nest into a backbone, and which saved backbone fields may stand
in for the user's (docs/runs.md)."""

from __future__ import annotations

import importlib
from argparse import Namespace
from pathlib import Path
from typing import Any

# ``ckpt_path`` values that Lightning resolves itself (``"best"``, ...): no file to read beforehand.
LIGHTNING_CHECKPOINT_KEYWORDS = ("best", "last", "hpc", "registry")


def is_local_checkpoint_path(ckpt_path: str | None) -> bool:
    """Whether ``ckpt_path`` names a local file to read (not a Lightning keyword, not a URL)."""
    if not ckpt_path:
        return False
    keyword = str(ckpt_path).split(":", 1)[0]
    return keyword not in LIGHTNING_CHECKPOINT_KEYWORDS and "://" not in str(ckpt_path)


def import_class(class_path: str) -> type:
    """``"tasks.translation.module.TranslationModel"`` → the class."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def comparable(value: Any) -> Any:
    """``value`` with tuples as lists and namespaces as dicts, so that a value read back from a
    checkpoint (lists) equals the same value given in YAML or on the command line."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(item) for item in value]
    return value


MISSING = object()


def nested_value(arguments: Any, path: str) -> Any:
    """The value at the dotted ``path`` (``"backbone.d_model"``) of nested dicts or namespaces, or
    ``MISSING``."""
    value = arguments
    for key in path.split("."):
        if isinstance(value, Namespace):
            value = vars(value)
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def architecture_arguments(model_class: type, arguments: dict[str, Any]) -> list[str]:
    """The paths of ``arguments`` that shape the weights or what they compute: those of the class's
    ``ARCHITECTURE_ARGUMENTS`` (dotted paths into a backbone config, e.g. ``backbone.d_model``) that
    ``arguments`` holds, or every argument of a class without that attribute (fail loudly)."""
    declared = getattr(model_class, "ARCHITECTURE_ARGUMENTS", None)
    if declared is None:
        return list(arguments)
    return [path for path in declared if nested_value(arguments, path) is not MISSING]


def architecture_conflicts(
    model: Any, given: dict[str, Any], saved: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(argument path, given value, checkpoint value)`` of every architecture argument of ``model``
    (``architecture_arguments``) that ``given`` (the arguments the model was built with) and ``saved``
    (the checkpoint's) both hold, with different values."""
    conflicts = []
    for path in sorted(architecture_arguments(type(model), given)):
        value, saved_value = nested_value(given, path), nested_value(saved, path)
        if saved_value is not MISSING and comparable(value) != comparable(saved_value):
            conflicts.append((path, value, saved_value))
    return conflicts


def with_nested_backbone(model_class: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyperparameters in the layout of ``model_class``: those written before the
    backbone config (flat ``d_model``, ``attention``, ...) get their backbone fields moved under
    ``backbone`` (``BACKBONE_CONFIG.nest_legacy_hyperparameters``); others are unchanged."""
    config_class = getattr(model_class, "BACKBONE_CONFIG", None)
    return hparams if config_class is None else config_class.nest_legacy_hyperparameters(hparams)


def resolved_backbone(model_class: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` (a model's parsed init arguments) with its ``backbone`` resolved into the values
    the model is built with (its preset applied, ``BACKBONE_CONFIG``); unchanged for a model without
    one, or a backbone that does not build (its own error is reported when the model is built)."""
    config_class = getattr(model_class, "BACKBONE_CONFIG", None)
    if config_class is None or arguments.get("backbone") is None:
        return arguments
    try:
        backbone = config_class.of(comparable(arguments["backbone"]))
    except (ValueError, TypeError):
        return arguments
    return arguments | {"backbone": backbone.as_dict()}


def backbone_defaults(model_class: type, saved: dict[str, Any], given: Any) -> dict[str, Any]:
    """The checkpoint's backbone fields that may stand in for the user's: all of them, or, when the
    user names a ``preset`` (``given``: the backbone as parsed without the checkpoint), those the
    preset does not set (the preset's values are given values, they win over the checkpoint's)."""
    config_class = getattr(model_class, "BACKBONE_CONFIG", None)
    preset = nested_value(given, "preset")
    if config_class is None or preset in (MISSING, None) or preset not in config_class.PRESETS:
        return saved
    return {
        key: value for key, value in saved.items() if key not in {"preset", *config_class.PRESETS[preset]}
    }


def run_config_hint(ckpt_path: str) -> str:
    """``"; that run's settings: --config <version dir>/config.yaml"`` when the checkpoint lies in a
    version directory holding the config ``fit`` saved, else ``""``."""
    config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    return f"; that run's settings: --config {config}" if config.is_file() else ""
