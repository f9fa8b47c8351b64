"""The task option ``compile: true`` (``fwp.training.compilation``): the backbone's Transformer blocks
run compiled (``fullgraph=True``) in every loop, training gives the eager run's losses, checkpoints
keep their keys, and the warm-up is printed. The compiler backend is ``aot_eager`` here (the same
graph capture as inductor without its C++ build, which takes minutes on a loaded CPU; the inductor
path is tested in tests/model/test_compile.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from cli_runs import QUIET, task_args

from fwp.model import TransformerBlock, compile_blocks
from fwp.training import compilation
from fwp.training.cli import main
from fwp.training.compilation import CompileWarmupReport

SHORT_FIT = [
    "--trainer.max_steps", "3",
    "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.logger", "false",
    "--seed_everything", "5",
]  # fmt: skip


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compilation, "compile_blocks", partial(compile_blocks, backend="aot_eager"))
    torch._dynamo.reset()


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_compiled_backbone_trains_like_eager_and_reports_its_warm_up(
    task: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = {}
    for compiled in (False, True):
        cli = main(
            [
                "fit",
                *task_args(task, tmp_path),
                *SHORT_FIT,
                *QUIET,
                "--model.init_args.compile",
                str(compiled),
            ]
        )
        blocks = [module for module in cli.model.modules() if isinstance(module, TransformerBlock)]
        assert blocks and all((block._compiled_call_impl is not None) == compiled for block in blocks)
        metrics = cli.trainer.callback_metrics
        runs[compiled] = (float(metrics["train/loss"]), float(metrics["valid/loss"]), cli.model.state_dict())
    (train_eager, valid_eager, weights_eager), (train_compiled, valid_compiled, weights_compiled) = (
        runs[False],
        runs[True],
    )
    assert train_compiled == pytest.approx(train_eager, rel=1e-4)
    assert valid_compiled == pytest.approx(valid_eager, rel=1e-4)
    assert list(weights_compiled) == list(weights_eager)
    torch.testing.assert_close(weights_compiled, weights_eager, rtol=1e-4, atol=1e-5)
    (report,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, CompileWarmupReport)]
    reports = report.reports
    assert any(
        line.startswith("fwp: torch.compile warm-up (train): the first batch took") for line in reports
    )
    assert any("(validation)" in line for line in reports), reports
