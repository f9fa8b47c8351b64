"""Attention and model construction faults: options that parse but describe no model this machine can
build (a backend it cannot run, a normalisation that does not exist, a write normalisation without the
denominator), and weights of a layout the model no longer has. Each runs the synthetic LM config on a
tiny corpus (``fit`` for one step, or ``test``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning
import torch

from tests.faults.cases_data import config, write_lm_corpus
from tests.faults.cli_run import Fault

LM_FIT = ["fit", "--config", "conf/lm/synthetic.yaml", "--trainer.fast_dev_run", "1"]


def lm_fit(tmp_path: Path, *options: str) -> list[str]:
    """One step of the synthetic LM on a tiny corpus with ``options`` added."""
    data = write_lm_corpus(tmp_path / "wiki")
    return [*config(LM_FIT), "--data.init_args.data_dir", str(data), *options]


def lm_fit_with_attention(tmp_path: Path, attention: str) -> list[str]:
    """One step of the synthetic LM on a tiny corpus with ``attention`` (a YAML flow mapping)."""
    return lm_fit(tmp_path, "--model.init_args.backbone.attention", attention)


def legacy_softmax_checkpoint_test(tmp_path: Path) -> list[str]:
    """``test`` from a checkpoint whose adaptive softmax has ``nn.AdaptiveLogSoftmaxWithLoss``'s layout
    (the layout before Transformer-XL's): the weights are refused by name, not half-loaded."""
    from fwp.training.cli import main

    data = write_lm_corpus(tmp_path / "wiki")
    args = [*config(LM_FIT[1:3]), "--data.init_args.data_dir", str(data)]
    args += ["--model.init_args.backbone.adaptive_cutoffs", "[5, 10]", "--trainer.logger", "false"]
    model = main(args, run=False).model
    legacy = torch.nn.AdaptiveLogSoftmaxWithLoss(64, model.hparams.vocab_size, [5, 10]).state_dict()
    state = {k: v for k, v in model.state_dict().items() if ".adaptive_softmax." not in k}
    state |= {f"model.adaptive_softmax.{k}": v for k, v in legacy.items()}
    checkpoint = {"state_dict": state, "hyper_parameters": dict(model.hparams), "epoch": 0, "global_step": 0}
    torch.save(checkpoint | {"pytorch-lightning_version": lightning.__version__}, tmp_path / "old.ckpt")
    return ["test", *args, "--ckpt_path", str(tmp_path / "old.ckpt")]


TRITON_RUNS_HERE = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None

CASES: list[Fault] = [
    Fault(
        "model-unknown-normalization",
        lambda t: lm_fit_with_attention(t, "{name: delta, normalization: both}"),
        names=lambda t: ["normalization", "[sum, denominator]", "'both'"],
    ),
    Fault(  # elu + 1 has no order: nu was silently ignored
        "model-option-the-system-does-not-use",
        lambda t: lm_fit_with_attention(t, "{name: linear, nu: 3}"),
        names=lambda t: ["'linear'", "nu=3", "is not used"],
    ),
    Fault(  # no gated Triton kernel, on any machine
        "model-decay-with-the-triton-backend",
        lambda t: lm_fit_with_attention(t, "{name: gated_deltanet, backend: triton}"),
        names=lambda t: ["'gated_deltanet'", "backend='triton' has no kernel for the gated rules", "'chunk'"],
    ),
    Fault(
        "model-denominator-write-without-denominator",
        lambda t: lm_fit_with_attention(t, "{name: delta, normalization: sum, denominator_write: true}"),
        names=lambda t: ["denominator_write", "normalization"],
    ),
    Fault(  # checked when jsonargparse builds the config, inside its union of types: the reason alone
        "model-backbone-field-out-of-range",
        lambda t: lm_fit(t, "--model.init_args.backbone.n_layers", "0"),
        names=lambda t: ["backbone (DecoderLMConfig)", "n_layers must be >= 1", "n_layers=0"],
    ),
    Fault(
        "model-backbone-unknown-preset",
        lambda t: lm_fit(t, "--model.init_args.backbone.preset", "wt103-large"),
        names=lambda t: ["preset", "'wt103-large'", "wt103-small"],
    ),
    Fault(  # the sizes listed are the backbone's with its preset (synthetic: d_model 64) applied
        "model-backbone-too-large-for-memory",
        lambda t: lm_fit(t, "--model.init_args.backbone.d_ff", str(10**14)),
        names=lambda t: [
            "MemoryError",
            f"--model.init_args.backbone.d_ff={10**14}",
            "--model.init_args.backbone.d_model=64",
            "--model.init_args.backbone.n_layers=2",
        ],
    ),
    Fault(
        "model-checkpoint-with-the-earlier-adaptive-softmax",
        legacy_softmax_checkpoint_test,
        names=lambda t: ["adaptive_softmax.head.weight", "retrain"],
    ),
]
if not TRITON_RUNS_HERE:
    CASES.append(
        Fault(
            "model-triton-backend-without-cuda",
            lambda t: lm_fit_with_attention(t, "{name: delta, backend: triton}"),
            names=lambda t: ["backend='triton'", "'auto'", "'chunk'"],
        )
    )
