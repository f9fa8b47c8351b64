"""The language-modelling experiments of conf/README.md: each runs one step through the CLI and holds
the paper's settings (the table below: what each composition of conf/lm must resolve to)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fwp.attention import FastWeightAttention, build_attention
from fwp.model import DecoderLMConfig
from fwp.training.cli import main
from tasks.language_modeling.data import SegmentDataset, SlidingWindowDataset
from tasks.language_modeling.synthetic import write_synthetic_corpus
from tests.experiments import (
    beyond_the_paper,
    documented_experiments,
    experiment_arguments,
    experiment_config,
    model_arguments,
)

EXPERIMENTS = sorted(name for name in documented_experiments() if name.startswith(("wt103_", "lm_")))
DELTA = {"rule": "delta", "normalization": ["sum", "denominator"], "eps": 1e-5, "sum_eps": 0.0}
SUM_RULE = {"rule": "sum", "normalization": "denominator", "eps": 1e-5, "scale": "scores"}
FAVOR_LM = {"omega_draw": "transposed", "redraw": "train"}
SUM_RULE_SUMNORM = {"rule": "sum", "normalization": ["sum", "denominator"], "eps": 1e-5, "sum_eps": 0.0}
# what each WikiText-103 experiment's attention must be (the official attn_type in the comment); None =
# softmax. Options not listed keep the preset's value (e.g. scale 'output').
ROWS: dict[str, dict | None] = {
    "softmax": None,  # 2
    "linear": {"feature_map": "elu", **SUM_RULE},  # 4
    "performer": {"feature_map": "favor", "m": 16, "feature_eps": 1e-4, **FAVOR_LM, **SUM_RULE},  # 5
    "dpfp": {"feature_map": "dpfp", "nu": 2, **SUM_RULE},  # 6
    "delta": {"feature_map": "elu", **DELTA},  # 24, the Delta Network
    "performer_delta": {"feature_map": "favor", "m": 16, "feature_eps": 1e-4, **FAVOR_LM, **DELTA},  # 25
    "dpfp_delta": {"feature_map": "dpfp", "nu": 2, **DELTA},  # 26
    "linear_carry": {"feature_map": "elu", **SUM_RULE_SUMNORM, "scale": "output"},  # 34 + carry
    "delta_carry": {"feature_map": "elu", **DELTA},  # 24 + carry
    "linear_sumnorm": {"feature_map": "elu", **SUM_RULE_SUMNORM, "scale": "output"},  # 34
    "performer_sumnorm": {
        "feature_map": "favor",
        "m": 16,
        **FAVOR_LM,
        **SUM_RULE_SUMNORM,
        "scale": "output",
    },  # 35
    "dpfp_sumnorm": {"feature_map": "dpfp", "nu": 2, **SUM_RULE_SUMNORM, "scale": "output"},
    "delta_no_denominator": {"feature_map": "elu", "rule": "delta", "normalization": "sum", "sum_eps": 0.0},
    "delta_denominator_write": {"feature_map": "elu", **DELTA, "denominator_write": True},  # 44
}
MEDIUM = ("softmax", "linear", "performer", "dpfp", "delta", "delta_carry")
CARRY = ("linear_carry", "delta_carry")
PAPER = {
    "small": {"d_model": 128, "d_head": 16, "max_steps": 500000, "batch_size": 96, "segment_length": 256},
    "medium": {"d_model": 256, "d_head": 32, "max_steps": 400000, "batch_size": 56, "segment_length": 384},
}
TINY_MODEL = [f"--model.init_args.backbone.{option}" for option in ("n_layers=1", "d_model=16", "n_heads=2")]
TINY_MODEL += ["--model.init_args.backbone.d_head=8", "--model.init_args.backbone.d_ff=16"]
CUTOFFS = "--model.init_args.backbone.adaptive_cutoffs=[20, 40, 80]"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("lm_configs"), train_lines=60, valid_lines=8, test_lines=8
    )


def test_every_paper_experiment_has_a_config() -> None:
    expected = {f"wt103_small_{name}" for name in ROWS} | {f"wt103_medium_{name}" for name in MEDIUM}
    expected |= {"lm_synthetic_delta", "lm_synthetic_softmax"}
    assert set(EXPERIMENTS) - beyond_the_paper() == expected


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_runs_one_step(name: str, corpus: Path, tmp_path: Path, monkeypatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    model_args = model_arguments(experiment_config(name))
    args = [
        "fit",
        *experiment_arguments(name),
        "--trainer.fast_dev_run=1",
        f"--data.init_args.data_dir={corpus}",
    ]
    args += ["--data.init_args.batch_size=2", "--data.init_args.segment_length=8"]
    args += ["--data.init_args.eval_batch_size=2", "--data.init_args.eval_segment_length=8", *TINY_MODEL]
    if model_args.get("adaptive_cutoffs"):
        args.append(CUTOFFS)
    cli = main(args)
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.backbone["attention"] == model_args["attention"]
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size
    assert torch.isfinite(cli.trainer.callback_metrics["valid/ppl"])


def test_backbone_preset_overlay_and_flag_compose_field_by_field(corpus: Path, tmp_path: Path, monkeypatch):
    """jsonargparse builds the ``DecoderLMConfig`` from the base's ``backbone`` (preset ``synthetic``,
    a delta-rule attention, no positions), the overlay's keys (conf/lm/softmax.yaml: attention and
    positions) and a command-line field, merged key by key; the preset fills every field not given."""
    monkeypatch.chdir(tmp_path)
    args = [*experiment_arguments("lm_synthetic_softmax"), f"--data.init_args.data_dir={corpus}"]
    cli = main([*args, "--model.init_args.backbone.d_model=32", "--trainer.logger=false"], run=False)
    expected = DecoderLMConfig(preset="synthetic", attention="softmax", positional="sinusoidal", d_model=32)
    assert cli.model.model.config == expected
    assert cli.model.hparams.backbone == expected.as_dict()
    assert cli.model.model.embedding.weight.shape[1] == 32
    assert len(cli.model.model.stack.blocks) == DecoderLMConfig.PRESETS["synthetic"]["n_layers"]


def test_sliding_evaluation_is_a_command_line_override(corpus: Path, tmp_path: Path, monkeypatch, one_thread):
    """The README's ``test ... --data.init_args.eval_mode sliding --data.init_args.eval_stride N``."""
    monkeypatch.chdir(tmp_path)
    args = ["test", *experiment_arguments("lm_synthetic_delta"), f"--data.init_args.data_dir={corpus}"]
    args += ["--data.init_args.eval_mode", "sliding", "--data.init_args.eval_stride", "16", *TINY_MODEL]
    cli = main([*args, "--trainer.limit_test_batches=2", "--trainer.logger=false"])
    assert isinstance(cli.datamodule.datasets["test"], SlidingWindowDataset)
    assert torch.isfinite(cli.trainer.callback_metrics["test/ppl"])


@pytest.mark.parametrize(
    ("name", "test_dataset"),
    [("wt103_small_delta", SlidingWindowDataset), ("wt103_small_delta_carry", SegmentDataset)],
)
def test_paper_test_protocol_is_the_default(name, test_dataset, corpus, tmp_path, monkeypatch, one_thread):
    """``test`` of a paper config: sliding windows of stride 1 one at a time (non-carry), or one stream
    (carry); validation keeps ``eval_batch_size`` segments."""
    monkeypatch.chdir(tmp_path)
    args = ["test", *experiment_arguments(name), f"--data.init_args.data_dir={corpus}", *TINY_MODEL]
    args += ["--data.init_args.eval_segment_length=8", CUTOFFS]
    cli = main([*args, "--trainer.limit_test_batches=3", "--trainer.logger=false"])
    test = cli.datamodule.datasets["test"]
    assert isinstance(test, test_dataset)
    if isinstance(test, SlidingWindowDataset):  # one window per batch, one new target per window
        assert test.batch_size == 1 and (test.score_from[1:-1] == test.window_length - 1).all()
    else:
        assert test.num_columns == 1
    cli.datamodule.setup("validate")
    valid = cli.datamodule.datasets["valid"]
    assert isinstance(valid, SegmentDataset) and valid.num_columns == 10


WIKITEXT_PAPER = [name for name in EXPERIMENTS if name.startswith("wt103") and name not in beyond_the_paper()]


@pytest.mark.parametrize("experiment", WIKITEXT_PAPER)
def test_wikitext_configs_hold_the_paper_settings(experiment: str) -> None:
    config = experiment_config(experiment)
    size, name = experiment.split("_", 2)[1:]
    paper = PAPER[size]
    model, trainer, data = model_arguments(config), config["trainer"], config["data"]["init_args"]
    assert config["model"]["class_path"] == "tasks.language_modeling.module.LanguageModel"
    assert config["data"]["class_path"] == "tasks.language_modeling.data.LanguageModelingDataModule"
    expected_model = {
        "n_layers": 16,
        "d_model": paper["d_model"],
        "n_heads": 8,
        "d_ff": 2048,
        "dropout": 0.1,
        "norm": "post",
        "adaptive_cutoffs": [20000, 40000, 200000],
        "lr": 0.00025,
        "warmup_steps": 2000,
        "schedule": "cosine",
    }
    assert {key: model[key] for key in expected_model} == expected_model
    assert (model["d_head"] or model["d_model"] // model["n_heads"]) == paper["d_head"]
    carry = name in CARRY
    assert model["carry_state"] is carry
    assert model["positional"] == ("none" if carry else "sinusoidal")
    assert trainer["max_steps"] == paper["max_steps"] and trainer["gradient_clip_val"] == 0.25
    assert data["tokenizer"] == "word" and data["data_dir"] == "data/wikitext-103"
    assert data["batch_size"] == paper["batch_size"]
    assert data["segment_length"] == data["eval_segment_length"] == paper["segment_length"]
    assert data["test_batch_size"] == 1 and data.get("eval_stride", 1) == 1
    assert data["test_mode"] == ("segments" if carry else "sliding")
    assert model["init"] == "txl" and model["tie_embeddings"] is True and model["adaptive_div_value"] == 1
    core = build_attention(model["attention"], paper["d_head"])
    expected = ROWS[name]
    if expected is None:
        assert not isinstance(core, FastWeightAttention)
        return
    expected = {"scale": "output", "denominator_write": False} | expected
    assert {option: getattr(core, option) for option in expected} == expected
