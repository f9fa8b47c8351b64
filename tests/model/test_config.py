"""The typed backbone configs: presets, overrides, checks, the checkpoint form and the legacy layout."""

from __future__ import annotations

import pytest

from fwp.model import BlockConfig, DecoderLM, DecoderLMConfig, EncoderDecoder, EncoderDecoderConfig


def test_a_preset_fills_the_fields_not_given_and_a_given_field_wins() -> None:
    config = DecoderLMConfig(preset="wt103-small", attention="softmax", d_model=256)
    preset = DecoderLMConfig.PRESETS["wt103-small"]
    assert config.d_model == 256 and config.attention == "softmax"
    assert config.n_layers == preset["n_layers"] and config.init == preset["init"]
    assert config.adaptive_cutoffs == list(preset["adaptive_cutoffs"])
    assert config.max_positions == DecoderLMConfig.DEFAULTS["max_positions"], "not in the preset: default"


def test_without_a_preset_every_field_not_given_is_the_default() -> None:
    config = EncoderDecoderConfig(n_heads=4)
    assert config.n_heads == 4
    for name, value in EncoderDecoderConfig.DEFAULTS.items():
        if name != "n_heads":
            assert getattr(config, name) == value, name
    assert config.d_head is None and config.activation_dropout is None


def test_wt103_medium_is_small_with_twice_the_width_and_wmt14_big_overrides_base() -> None:
    small, medium = DecoderLMConfig(preset="wt103-small"), DecoderLMConfig(preset="wt103-medium")
    assert (medium.d_model, medium.d_head) == (2 * small.d_model, 2 * small.d_head)
    widths = {"preset": None, "d_model": None, "d_head": None}
    assert small.as_dict() | widths == medium.as_dict() | widths
    base, big = EncoderDecoderConfig(preset="wmt14-base"), EncoderDecoderConfig(preset="wmt14-big")
    assert (base.activation_dropout, big.activation_dropout) == (0.0, 0.0)
    assert (big.d_model, big.n_heads, big.d_ff, big.dropout) == (1024, 16, 4096, 0.3)


def test_the_saved_form_rebuilds_the_same_config() -> None:
    """Checkpoints store ``as_dict()``: every field resolved, so a later change of a preset's values
    cannot change a saved model."""
    config = EncoderDecoderConfig(preset="wmt14-big", decoder_attention={"name": "delta", "nu": 2})
    assert all(value is not None for key, value in config.as_dict().items() if key not in ("d_head",))
    assert EncoderDecoderConfig.of(config.as_dict()) == config
    assert EncoderDecoderConfig.of(None) == EncoderDecoderConfig()
    with pytest.raises(TypeError, match="EncoderDecoderConfig"):
        EncoderDecoderConfig.of(DecoderLMConfig())


def test_empty_cutoffs_turn_off_the_adaptive_softmax_of_a_preset() -> None:
    model = DecoderLM(50, DecoderLMConfig(preset="wt103-small", n_layers=1, adaptive_cutoffs=[]))
    assert DecoderLMConfig(preset="wt103-small", adaptive_cutoffs=[]).adaptive_cutoffs is None
    assert not model.adaptive


@pytest.mark.parametrize(
    ("config_class", "options", "message"),
    [
        (DecoderLMConfig, {"preset": "wt103-large"}, r"preset must be one of \['synthetic', 'wt103-small'"),
        (
            EncoderDecoderConfig,
            {"preset": "wt103-small"},
            r"preset must be one of .*got preset='wt103-small'",
        ),
        (DecoderLMConfig, {"n_layers": 0}, r"n_layers must be >= 1, got n_layers=0"),
        (EncoderDecoderConfig, {"n_encoder_layers": 0}, r"n_encoder_layers must be >= 1"),
        (DecoderLMConfig, {"dropout": 1.0}, r"dropout must be in \[0, 1\), got dropout=1.0"),
        (EncoderDecoderConfig, {"activation_dropout": -0.1}, r"activation_dropout must be in \[0, 1\)"),
        (DecoderLMConfig, {"norm": "middle"}, r"norm must be one of \['pre', 'post'\]"),
        (EncoderDecoderConfig, {"activation": "tanh"}, r"activation must be one of \['relu', 'gelu'\]"),
        (DecoderLMConfig, {"positional": "rotary"}, r"positional must be one of"),
        (EncoderDecoderConfig, {"max_positions": 0}, r"max_positions must be >= 1"),
        (DecoderLMConfig, {"init": "xavier"}, r"init must be one of \['torch', 'txl'\]"),
        (DecoderLMConfig, {"adaptive_div_value": 0.5}, r"adaptive_div_value must be >= 1.0"),
        (DecoderLMConfig, {"d_ff": 0}, r"d_ff must be >= 1, got d_ff=0"),
        (EncoderDecoderConfig, {"d_head": 0}, r"d_head must be >= 1"),
    ],
)
def test_an_invalid_field_is_refused_by_name_when_the_config_is_built(config_class, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        config_class(**options)


def test_every_block_of_a_backbone_gets_the_configs_block_fields() -> None:
    """One ``BlockConfig`` built from the backbone config reaches every block of every stack."""
    config = EncoderDecoderConfig(
        d_model=16, n_heads=2, d_ff=24, n_encoder_layers=1, n_decoder_layers=2, activation="gelu"
    )
    assert config.block == BlockConfig(
        d_model=16, n_heads=2, d_ff=24, dropout=0.1, activation="gelu", norm="post"
    )
    model = EncoderDecoder(30, config)
    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        assert block.feed_forward.expand.out_features == 24
        assert block.feed_forward.activation.__name__ == "gelu"


def test_the_translation_backbone_takes_an_activation_and_the_lm_an_activation_dropout() -> None:
    """The drift between the task signatures: translation could not set ``activation``, the language
    model had no ``activation_dropout``; both fields now exist in both configs."""
    lm = DecoderLM(30, DecoderLMConfig(d_model=8, n_heads=2, d_ff=8, n_layers=1, activation_dropout=0.0))
    assert lm.stack.blocks[0].feed_forward.activation_dropout.p == 0.0
    assert lm.stack.blocks[0].feed_forward.dropout.p == 0.1
    assert set(DecoderLMConfig.field_names()) & set(EncoderDecoderConfig.field_names()) >= {
        "activation",
        "activation_dropout",
        "max_positions",
    }


def test_architecture_fields_leave_out_the_training_only_ones() -> None:
    fields = DecoderLMConfig.architecture_fields()
    assert "backbone.d_model" in fields and "backbone.attention" in fields
    assert not fields & {
        "backbone.dropout",
        "backbone.activation_dropout",
        "backbone.init",
        "backbone.preset",
    }


def test_flat_hyperparameters_of_older_checkpoints_are_nested_under_backbone() -> None:
    """Checkpoints written before the backbone config hold the fields as flat task arguments
    (translation's position limit as ``position_limit``); task arguments stay where they are."""
    lm = {"vocab_size": 41, "d_model": 16, "attention": "delta", "lr": 0.1, "carry_state": True}
    assert DecoderLMConfig.nest_legacy_hyperparameters(lm) == {
        "vocab_size": 41,
        "lr": 0.1,
        "carry_state": True,
        "backbone": {"d_model": 16, "attention": "delta"},
    }
    mt = {"vocab_size": 9, "pad_id": 0, "n_encoder_layers": 1, "position_limit": 64, "beam_size": 4}
    nested = EncoderDecoderConfig.nest_legacy_hyperparameters(mt)
    assert nested["backbone"] == {"n_encoder_layers": 1, "max_positions": 64}
    assert EncoderDecoderConfig.nest_legacy_hyperparameters(nested) == nested, "the new layout is kept"
    assert DecoderLMConfig.nest_legacy_hyperparameters({"num_keys": 5}) == {"num_keys": 5}
