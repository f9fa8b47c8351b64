"""Every experiment documented in conf/README.md parses through the CLI; every file in conf/ is used by
one; an overlay or flag replaces the attention spec whole.

Running one step is tested per task (tests/<task>/test_configs.py or test_cli.py) with the tiny
overrides each task needs; this test guarantees no composition or config file is left out of parsing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.retrieval.sweep import composition_arguments
from tests.experiments import (
    REPO,
    documented_experiments,
    documented_sweep_compositions,
    experiment_config,
    parsed_config,
)

CONF = REPO / "conf"
# device and precision presets: stacked with --trainer, tested in tests/training/test_presets.py
TRAINER_PRESETS = CONF / "trainer"
FWM = "fwp.attention.fwm.FastWeightMemoryAttention"


def test_the_readme_documents_every_family():
    names = set(documented_experiments())
    assert {"setting1_delta", "setting2_fwm", "wt103_small_delta", "wt103_medium_delta_carry"} <= names
    assert {"wmt14_big_delta", "wmt14_base_softmax", "lm_synthetic_delta", "mt_synthetic_delta"} <= names
    assert len(names) >= 53


@pytest.mark.parametrize("name", sorted(documented_experiments()))
def test_documented_experiment_parses(name):
    config = experiment_config(name)
    assert config["model"]["class_path"].startswith("tasks.")
    assert config["data"]["class_path"].startswith("tasks.")


def test_every_config_file_is_in_a_documented_experiment():
    """A file no documented command uses is dead (or undocumented); trainer presets are stacked with
    ``--trainer`` and documented in docs/scale-out.md; a ``trainer: FILE`` a base names counts as used."""
    used = {
        Path(a) for arguments in documented_experiments().values() for a in arguments if a.endswith(".yaml")
    }
    referenced = {
        path.parent / "trainer.yaml" for path in used if "trainer: trainer.yaml" in path.read_text()
    }
    files = {path for path in CONF.rglob("*.yaml") if TRAINER_PRESETS not in path.parents}
    assert files - used - referenced == set()
    assert len(list(CONF.rglob("*.yaml"))) <= 25


@pytest.mark.parametrize("composition", documented_sweep_compositions(), ids=lambda c: c.split("conf/")[-1])
def test_sweep_composition_equals_a_documented_experiment(composition):
    """The sweep commands of conf/README.md run the same configs as the single-run commands."""
    config = parsed_config(composition_arguments(composition))
    assert any(config == experiment_config(name) for name in documented_experiments())


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (  # a registry-name spec given as a flag over the base's fast_weight spec
            ["--config", "conf/lm/wt103_small.yaml", "--model.backbone.attention", "{name: dpfp, nu: 1}"],
            {"name": "dpfp", "nu": 1},
        ),
        (  # a class_path spec from an overlay file over the base's {name: delta, nu: 2}
            ["--config", "conf/retrieval/setting2.yaml", "--config", "conf/retrieval/fwm.yaml"],
            {"class_path": FWM, "init_args": {"feature_map": "tanh"}},
        ),
        (  # and back: a registry spec over the overlay's class_path spec
            [
                "--config", "conf/retrieval/setting2.yaml", "--config", "conf/retrieval/fwm.yaml",
                "--model.attention", "{name: dpfp, nu: 3}",
            ],
            {"name": "dpfp", "nu": 3},
        ),
        (  # a plain name over a dict
            ["--config", "conf/lm/wt103_medium.yaml", "--config", "conf/lm/softmax.yaml"],
            "softmax",
        ),
        (  # the MT overlay replaces both self-attention specs
            ["--config", "conf/mt/wmt14_big.yaml", "--config", "conf/mt/performer.yaml"],
            {"name": "performer", "m": 64},
        ),
    ],
)  # fmt: skip
def test_an_overlay_replaces_the_attention_spec_whole(arguments, expected):
    """jsonargparse merges nested sections key by key; an attention spec (``str | dict``) must not be
    merged, or two systems' options would make a chimera (e.g. ``{name: dpfp, nu: 1, feature_map: elu,
    rule: delta, …}``)."""
    arguments = [str(REPO / a) if a.startswith("conf/") else a for a in arguments]
    init_args = parsed_config(arguments)["model"]["init_args"]
    model = init_args | (init_args.get("backbone") or {})  # LM and MT: the attentions are backbone fields
    for key in ("attention", "encoder_attention", "decoder_attention"):
        if key in model:
            assert model[key] == expected


def test_an_overlay_keeps_the_base_settings_it_does_not_name():
    """conf/retrieval/fwm.yaml names the batch size, lr and attention only: the rest is the base's."""
    base = experiment_config("setting2_dpfp2_delta")
    fwm = experiment_config("setting2_fwm")
    assert fwm["data"]["init_args"] == base["data"]["init_args"] | {"batch_size": 128}
    assert fwm["model"]["init_args"]["lr"] == 0.0001
    assert fwm["trainer"] == base["trainer"]
