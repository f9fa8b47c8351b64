"""conf/lm: every experiment runs one step through the CLI; the files hold the paper's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fwp.attention import FastWeightAttention, build_attention
from fwp.cli import main
from tasks.language_modeling.data import SlidingWindowDataset
from tasks.language_modeling.synthetic import write_synthetic_corpus

CONF = Path(__file__).resolve().parents[2] / "conf" / "lm"
EXPERIMENTS = sorted(CONF.glob("*.yaml"))
ABLATIONS = (
    "linear_sumnorm",
    "linear_delta",
    "performer_sumnorm",
    "performer_delta",
    "dpfp_sumnorm",
    "delta_nonorm",
    "delta_denominator",
    "delta_denominator_write",
)
CARRY = ("linear_carry", "delta_carry")
# (feature map, update rule, normalisation) of each preset's attention; None = softmax
PRESET_ATTENTIONS = {
    "softmax": None,
    "linear": ("elu", "sum", "denominator"),
    "performer": ("favor", "sum", "denominator"),
    "dpfp": ("dpfp", "sum", "denominator"),
    "delta": ("dpfp", "delta", "sum"),
}
PRESETS = tuple(PRESET_ATTENTIONS)
# what the ablation or carry experiment ``<preset>_<variant>`` changes in its preset's attention
VARIANTS = {
    "sumnorm": {"normalization": "sum"},
    "delta": {"rule": "delta", "normalization": "sum"},
    "nonorm": {"normalization": "none"},
    "denominator": {"normalization": "denominator"},
    "denominator_write": {"normalization": "denominator"},
    "carry": {},
}
PAPER = {
    "small": {"d_model": 128, "d_head": 16, "max_steps": 500000, "batch_size": 96, "segment_length": 256},
    "medium": {"d_model": 256, "d_head": 32, "max_steps": 400000, "batch_size": 56, "segment_length": 384},
}
TINY_MODEL = ["--model.init_args.n_layers=1", "--model.init_args.d_model=16", "--model.init_args.n_heads=2"]
TINY_MODEL += ["--model.init_args.d_head=8", "--model.init_args.d_ff=16"]


def expected_attention(name: str) -> tuple[str, str, str] | None:
    """(feature map, update rule, normalisation) of experiment ``wt103_<size>_<name>``'s attention: its
    preset's, changed by its variant; None for softmax."""
    preset, _, variant = name.partition("_")
    if PRESET_ATTENTIONS[preset] is None:
        return None
    feature_map, rule, normalization = PRESET_ATTENTIONS[preset]
    core = {"rule": rule, "normalization": normalization} | (VARIANTS[variant] if variant else {})
    return feature_map, core["rule"], core["normalization"]


def load_experiment(path: Path) -> dict[str, Any]:
    """The experiment's YAML with its ``trainer:``/``data:`` file references read in."""
    config = yaml.safe_load(path.read_text())
    for section in ("trainer", "data"):
        if isinstance(config[section], str):
            config[section] = yaml.safe_load((path.parent / config[section]).read_text())
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("lm_configs"), train_lines=60, valid_lines=8, test_lines=8
    )


def test_every_paper_experiment_has_a_config() -> None:
    names = {path.stem for path in EXPERIMENTS}
    expected = {f"wt103_{size}_{preset}" for size in PAPER for preset in PRESETS}
    expected |= {f"wt103_small_{name}" for name in ABLATIONS + CARRY}
    expected |= {"synthetic_delta", "synthetic_softmax"}
    assert names == expected


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda path: path.stem)
def test_config_runs_one_step(path: Path, corpus: Path, tmp_path: Path, monkeypatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    model_args = load_experiment(path)["model"]["init_args"]
    args = ["fit", "--config", str(path), "--trainer.fast_dev_run=1", f"--data.init_args.data_dir={corpus}"]
    args += ["--data.init_args.batch_size=2", "--data.init_args.segment_length=8"]
    args += ["--data.init_args.eval_batch_size=2", "--data.init_args.eval_segment_length=8", *TINY_MODEL]
    if model_args.get("adaptive_cutoffs"):
        args.append("--model.init_args.adaptive_cutoffs=[20, 40, 80]")
    cli = main(args)
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.attention == model_args["attention"]
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size
    assert torch.isfinite(cli.trainer.callback_metrics["valid/ppl"])


def test_sliding_evaluation_is_a_command_line_override(corpus: Path, tmp_path: Path, monkeypatch, one_thread):
    """The README's ``test ... --data.init_args.eval_mode sliding --data.init_args.eval_stride N``."""
    monkeypatch.chdir(tmp_path)
    args = ["test", "--config", str(CONF / "synthetic_delta.yaml"), f"--data.init_args.data_dir={corpus}"]
    args += ["--data.init_args.eval_mode", "sliding", "--data.init_args.eval_stride", "16", *TINY_MODEL]
    cli = main([*args, "--trainer.limit_test_batches=2", "--trainer.logger=false"])
    assert isinstance(cli.datamodule.datasets["test"], SlidingWindowDataset)
    assert torch.isfinite(cli.trainer.callback_metrics["test/ppl"])


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem.startswith("wt103")], ids=lambda p: p.stem)
def test_wikitext_configs_hold_the_paper_settings(path: Path) -> None:
    config = load_experiment(path)
    size, name = path.stem.split("_", 2)[1:]
    paper = PAPER[size]
    model, trainer, data = config["model"]["init_args"], config["trainer"], config["data"]["init_args"]
    assert config["model"]["class_path"] == "tasks.language_modeling.module.LanguageModel"
    assert config["data"]["class_path"] == "tasks.language_modeling.data.LanguageModelingDataModule"
    expected_model = {
        "n_layers": 16,
        "d_model": paper["d_model"],
        "n_heads": 8,
        "d_head": paper["d_head"],
        "d_ff": 2048,
        "dropout": 0.1,
        "norm": "post",
        "adaptive_cutoffs": [20000, 40000, 200000],
        "lr": 0.00025,
        "warmup_steps": 2000,
        "schedule": "cosine",
    }
    assert {key: model[key] for key in expected_model} == expected_model
    carry = name in CARRY
    assert model.get("carry_state", False) is carry
    assert model["positional"] == ("none" if carry else "sinusoidal")
    assert trainer["max_steps"] == paper["max_steps"] and trainer["gradient_clip_val"] == 0.25
    assert data["tokenizer"] == "word" and data["data_dir"] == "data/wikitext-103"
    assert data["batch_size"] == paper["batch_size"]
    assert data["segment_length"] == data["eval_segment_length"] == paper["segment_length"]
    core = build_attention(model["attention"], paper["d_head"])
    expected_core = expected_attention(name)
    if expected_core is None:
        assert not isinstance(core, FastWeightAttention)
    else:
        assert (core.feature_map, core.rule, core.normalization) == expected_core
        assert core.denominator_write is name.endswith("denominator_write")
        assert (
            core.nu == 2
            if core.feature_map == "dpfp"
            else core.m == 16
            if core.feature_map == "favor"
            else True
        )
