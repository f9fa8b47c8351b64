"""What ``predict`` prints: its results alone on stdout (the progress bar and messages on stderr)."""

from __future__ import annotations

from pathlib import Path

from fwp.training.cli import main
from tasks.language_modeling.synthetic import write_synthetic_corpus

REPO = Path(__file__).resolve().parents[2]


def test_lm_predict_prints_only_its_samples_on_stdout(tmp_path: Path, monkeypatch, capsys) -> None:
    """Lightning's progress bar wrote to stdout: ``predict > samples.txt`` mixed bar refreshes into the
    samples (and before that, the samples went to the log on stderr)."""
    monkeypatch.chdir(tmp_path)
    corpus = write_synthetic_corpus(tmp_path / "lm", train_lines=40, valid_lines=8, test_lines=8)
    cli = main([
        "predict", "--config", str(REPO / "conf/lm/synthetic.yaml"),
        "--data.init_args.data_dir", str(corpus), "--data.init_args.segment_length", "16",
        "--model.init_args.num_samples", "3", "--model.init_args.max_new_tokens", "4",
        "--trainer.enable_progress_bar", "true",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert cli.trainer.progress_bar_callback is not None
    lines = captured.out.splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 4 for line in lines), captured.out
    assert "Predicting" in captured.err
