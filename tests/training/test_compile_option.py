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

from fwp.model import TransformerBlock, compile_blocks
from fwp.training import compilation
from fwp.training.cli import main
from fwp.training.compilation import CompileWarmupReport
from tasks.language_modeling.synthetic import write_synthetic_corpus
from tasks.translation.synthetic import write_synthetic_parallel_corpus

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
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


def task_args(task: str, tmp_path: Path) -> list[str]:
    if task == "language_modeling":
        corpus = write_synthetic_corpus(tmp_path / "lm", train_lines=60, valid_lines=12, test_lines=12)
        data = ["--data.init_args.data_dir", str(corpus), "--data.init_args.batch_size", "4"]
        sizes = ["--data.init_args.segment_length", "16", "--model.init_args.log_text_samples", "1"]
        return ["--config", str(REPO / "conf/lm/synthetic.yaml"), *data, *sizes]
    corpus = write_synthetic_parallel_corpus(tmp_path / "mt", n_train=300, n_valid=8, n_test=8)
    data = ["--data.init_args.data_dir", str(corpus), "--data.init_args.bpe_vocab_size", "300"]
    return ["--config", str(REPO / "conf/mt/synthetic.yaml"), *data, "--model.init_args.beam_size", "1"]


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
