"""The registry: presets, spec forms, option overrides and error messages."""

from __future__ import annotations

import pytest

from fwp.attention import (
    AttentionCore,
    FastWeightAttention,
    SoftmaxAttention,
    available_attentions,
    build_attention,
    register_attention,
    registry,
)
from fwp.attention.fwm import FastWeightMemoryAttention

PRESETS = {
    "linear": ("elu", "denominator", "sum"),
    "performer": ("favor", "denominator", "sum"),
    "dpfp": ("dpfp", "denominator", "sum"),
    "delta": ("dpfp", "sum", "delta"),
    "fast_weight": ("dpfp", "sum", "delta"),
    "deltanet": ("l2", "none", "delta"),
    "gated_deltanet": ("l2", "none", "delta"),
    "gla": ("identity", "none", "sum"),
}


def test_the_paper_presets_and_fwm_are_registered() -> None:
    assert available_attentions() == sorted(["softmax", "fwm", *PRESETS])
    assert isinstance(build_attention("fwm", d_head=8), FastWeightMemoryAttention)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_fast_weight_presets_build_their_system(name: str) -> None:
    core = build_attention(name, d_head=8)
    assert isinstance(core, FastWeightAttention)
    assert (core.feature_map, core.normalization, core.rule) == PRESETS[name]
    assert core.uses_beta == (core.rule == "delta")
    assert ("bidirectional" in core.refused_modes) == (core.rule == "delta" or core.decay)
    assert core.is_fast_weight


def test_softmax_preset_builds() -> None:
    core = build_attention("softmax", d_head=8)
    assert isinstance(core, SoftmaxAttention)
    assert not core.uses_beta and not core.refused_modes and not core.is_fast_weight


def test_preset_defaults_of_the_paper() -> None:
    performer = build_attention("performer", d_head=8)
    assert (performer.m, performer.redraw, performer.feature_eps) == (16, "train", 1e-4)
    assert tuple(performer.phi.omega.shape) == (16, 8)
    assert build_attention("dpfp", d_head=8).nu == 2
    assert build_attention("delta", d_head=8).nu == 2


def test_spec_options_override_preset_defaults() -> None:
    core = build_attention({"name": "performer", "m": 64, "redraw": "always"}, d_head=8)
    assert (core.m, core.redraw, core.normalization) == (64, "always", "denominator")
    assert tuple(core.phi.omega.shape) == (64, 8)


def test_class_path_spec() -> None:
    spec = {
        "class_path": "fwp.attention.FastWeightAttention",
        "init_args": {"feature_map": "elu", "rule": "sum", "normalization": "none"},
    }
    core = build_attention(spec, d_head=4)
    assert isinstance(core, FastWeightAttention)
    assert (core.feature_map, core.rule, core.normalization, core.d_head) == ("elu", "sum", "none", 4)
    assert isinstance(build_attention({"class_path": "fwp.attention.SoftmaxAttention"}, 4), SoftmaxAttention)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"class_path": "fwp.attention.no_such_module.Core"}, "cannot be imported"),
        ({"class_path": "torch.nn.Linear"}, "not an AttentionCore subclass"),
        ({"class_path": "fwp.attention.SoftmaxAttention", "m": 3}, "extra keys"),
        ({"m": 3}, "needs a 'name' or a 'class_path'"),
        (3, "must be a name or a dict"),
    ],
)
def test_malformed_specs_raise(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_attention(spec, d_head=4)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown attention 'foo'; known: ") as error:
        build_attention("foo", d_head=4)
    assert all(name in str(error.value) for name in available_attentions())


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ({"name": "performer", "mm": 3}, ["'performer'", "'mm'", "3"]),
        ({"name": "delta", "rule": "hebb"}, ["'delta'", "rule", "'hebb'"]),
        ({"name": "fast_weight", "feature_map": "relu"}, ["'fast_weight'", "feature_map", "'relu'"]),
        ({"name": "linear", "normalization": "l2"}, ["'linear'", "normalization", "'l2'"]),
        ({"name": "performer", "redraw": "sometimes"}, ["'performer'", "redraw", "'sometimes'"]),
        ({"name": "performer", "m": 0}, ["'performer'", "m=0"]),
        ({"name": "delta", "backend": "cuda"}, ["'delta'", "backend", "'cuda'"]),
        ({"name": "softmax", "dropout": 1.5}, ["'softmax'", "dropout", "1.5"]),
        ({"name": "softmax", "d_head": 3}, ["'softmax'", "d_head", "3"]),
        ({"class_path": "fwp.attention.SoftmaxAttention", "init_args": {"drop": 0.1}}, ["drop", "0.1"]),
    ],
)
def test_bad_options_name_attention_option_and_value(spec: dict, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        build_attention(spec, d_head=4)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)


def test_register_attention_with_a_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_attention(
        "hebbian", FastWeightAttention, feature_map="identity", rule="sum", normalization="none"
    )
    assert "hebbian" in available_attentions()
    core = build_attention({"name": "hebbian", "normalization": "denominator"}, d_head=4)
    assert (core.feature_map, core.normalization) == ("identity", "denominator")
    with pytest.raises(ValueError, match="already registered"):
        register_attention("hebbian", FastWeightAttention)
    with pytest.raises(ValueError, match="'typo'"):
        register_attention("broken", FastWeightAttention, typo=1)


def test_factory_must_return_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_attention("not_a_core", lambda d_head: d_head)
    with pytest.raises(ValueError, match="not an AttentionCore"):
        build_attention("not_a_core", d_head=4)
    assert issubclass(FastWeightAttention, AttentionCore)


@pytest.mark.parametrize(
    ("spec", "option", "system"),
    [
        ({"name": "linear", "nu": 3}, "nu", "'linear'"),
        ({"name": "delta", "feature_map": "elu", "m": 32}, "m", "'delta'"),
        ({"name": "performer", "nu": 2}, "nu", "'performer'"),
        (
            {"class_path": "fwp.attention.FastWeightAttention", "init_args": {"feature_map": "tanh", "m": 8}},
            "m",
            "'fwp.attention.FastWeightAttention'",
        ),
    ],
)
def test_an_option_the_system_does_not_use_is_refused(spec: dict, option: str, system: str) -> None:
    """Bug caught: ``{name: linear, nu: 3}`` built elu + 1 and silently ignored ``nu``."""
    with pytest.raises(ValueError, match="is not used by this system") as error:
        build_attention(spec, d_head=8)
    assert f"option {option}=" in str(error.value)
    assert system in str(error.value)


def test_preset_defaults_the_resolved_system_does_not_use_are_dropped() -> None:
    """``{name: delta, feature_map: elu}``: the preset's ``nu = 2`` is a default, not the user's choice."""
    core = build_attention({"name": "delta", "feature_map": "elu"}, d_head=8)
    assert isinstance(core, FastWeightAttention)
    assert core.feature_map == "elu"
    assert core.phi.d_dot == 8
