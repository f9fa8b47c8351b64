"""Attention and model construction faults: options that parse but describe no model this machine can
build (a backend it cannot run, a normalisation that does not exist, a write normalisation without the
denominator). Each runs ``fit`` of the synthetic LM config on a tiny corpus for one step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tests.faults.cases_data import config, write_lm_corpus
from tests.faults.cli_run import Fault

LM_FIT = ["fit", "--config", "conf/lm/synthetic_delta.yaml", "--trainer.fast_dev_run", "1"]


def lm_fit_with_attention(tmp_path: Path, attention: str) -> list[str]:
    """One step of the synthetic LM on a tiny corpus with ``attention`` (a YAML flow mapping)."""
    data = write_lm_corpus(tmp_path / "wiki")
    return [*config(LM_FIT), "--data.init_args.data_dir", str(data), "--model.init_args.attention", attention]


TRITON_RUNS_HERE = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None

CASES: list[Fault] = [
    Fault(
        "model-unknown-normalization",
        lambda t: lm_fit_with_attention(t, "{name: delta, normalization: both}"),
        names=lambda t: ["normalization", "[sum, denominator]", "'both'"],
    ),
    Fault(
        "model-denominator-write-without-denominator",
        lambda t: lm_fit_with_attention(t, "{name: delta, normalization: sum, denominator_write: true}"),
        names=lambda t: ["denominator_write", "normalization"],
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
