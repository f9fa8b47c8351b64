"""The translation experiments of conf/README.md resolve to the intended settings; the synthetic ones
train one step."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwp.training.cli import main
from tasks.translation.synthetic import write_synthetic_parallel_corpus
from tests.experiments import (
    beyond_the_paper,
    documented_experiments,
    experiment_arguments,
    experiment_config,
    model_arguments,
)

EXPERIMENTS = sorted(name for name in documented_experiments() if name.startswith(("wmt14_", "mt_")))
PRESETS = ("softmax", "linear", "performer", "dpfp", "delta")
SIZES = {"big": (1024, 16, 4096), "base": (512, 8, 2048)}


def test_the_expected_experiments_exist() -> None:
    expected = {f"wmt14_{size}_{preset}" for size in SIZES for preset in PRESETS}
    assert expected | {"mt_synthetic_delta", "mt_synthetic_softmax"} == set(EXPERIMENTS) - beyond_the_paper()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_holds_its_settings(name: str) -> None:
    config = experiment_config(name)
    model = model_arguments(config)
    assert config["model"]["class_path"] == "tasks.translation.module.TranslationModel"
    assert config["data"]["class_path"] == "tasks.translation.data.TranslationDataModule"
    assert model["cross_attention"] == "softmax"
    preset = name.split("_", 2)[2]  # wmt14_big_softmax, mt_synthetic_gated_deltanet
    decoder = model["decoder_attention"]
    assert (decoder if isinstance(decoder, str) else decoder["name"]) == preset
    if name.startswith("wmt14_"):
        d_model, n_heads, d_ff = SIZES[name.split("_")[1]]
        assert (model["d_model"], model["n_heads"], model["d_ff"]) == (d_model, n_heads, d_ff)
        assert (model["n_encoder_layers"], model["n_decoder_layers"]) == (6, 6)
        assert model["activation_dropout"] == 0.0  # fairseq's transformer_wmt_en_de(_big)
        assert config["data"]["init_args"]["data_dir"] == "data/wmt14_en_de"
        assert (config["data"]["init_args"]["src_lang"], config["data"]["init_args"]["tgt_lang"]) == (
            "en",
            "de",
        )
    else:
        assert config["data"]["init_args"]["data_dir"] is None


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_parallel_corpus(
        tmp_path_factory.mktemp("corpus"), n_train=200, n_valid=8, n_test=8
    )


@pytest.mark.parametrize("name", [name for name in EXPERIMENTS if name.startswith("mt_synthetic_")])
def test_synthetic_config_trains_one_step_and_scores_bleu(
    name: str, small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"--data.init_args.data_dir={small_corpus}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.bpe_vocab_size=300",
        "--model.init_args.backbone.d_model=16",
        "--model.init_args.backbone.d_ff=32",
        "--trainer.max_steps=1",
        "--trainer.val_check_interval=1",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli = main(["fit", *experiment_arguments(name), *overrides])
    assert cli.trainer.global_step == 1
    assert "valid/sacrebleu" in cli.trainer.callback_metrics
    assert "valid/bleu_moses" in cli.trainer.callback_metrics  # the synthetic target is no Moses language
    assert any((tmp_path / "runs" / "mt_synthetic").rglob("events.out.tfevents.*"))
