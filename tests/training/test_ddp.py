"""DDP on CPU (2 processes, gloo) trains exactly like one process that sees the union of both ranks'
batches: the retrieval data module deals shards of every global batch to the ranks, and one process
with ``shards_per_rank: 2`` and twice the batch size takes both shards.

The language model's sliding-window evaluation under DDP scores every target of the split once: each
rank scores its share of the windows, the last rank's share padded with windows that score nothing,
and the perplexity is the one process's."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from cli_runs import build, fit, lm_args, parameters, retrieval_args, run_cli_process

from fwp.training.cli import main
from tasks.language_modeling.data import sliding_windows
from tasks.language_modeling.module import TokenNLL
from tasks.language_modeling.synthetic import write_synthetic_corpus
from tasks.retrieval.data import RetrievalDataModule, TrainingBatches

STEPS = 4
TRAINER = """
accelerator: cpu
devices: {devices}
strategy: {strategy}
max_steps: {steps}
val_check_interval: 2
check_val_every_n_epoch: null
num_sanity_val_steps: 0
enable_progress_bar: false
enable_model_summary: false
logger:
  class_path: lightning.pytorch.loggers.TensorBoardLogger
  init_args: {{save_dir: {directory}/runs, name: ddp}}
callbacks:
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    init_args: {{dirpath: {directory}/ckpt, filename: final, every_n_train_steps: {steps}}}
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    init_args: {{dirpath: {directory}/ckpt, filename: best, monitor: valid/loss}}
"""


def trainer_file(directory, devices: int, strategy: str):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "trainer.yaml"
    path.write_text(TRAINER.format(devices=devices, strategy=strategy, steps=STEPS, directory=directory))
    return str(path)


def best_eval_loss(checkpoint) -> float:
    states = torch.load(checkpoint, weights_only=True)["callbacks"]
    (score,) = [s["best_model_score"] for key, s in states.items() if "valid/loss" in key]
    return float(score)


def final_checkpoint(directory):
    return directory / "ckpt" / "final.ckpt"


def one_process_run(directory, batch_size: int, shards: int):
    args = [*retrieval_args("setting1_delta", batch_size=batch_size), "--data.init_args.shards_per_rank"]
    fit(build([*args, str(shards), "--trainer", trainer_file(directory, 1, "auto")]))
    return final_checkpoint(directory)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    args = [
        "fit",
        *retrieval_args("setting1_delta", batch_size=4),
        "--trainer",
        trainer_file(directory, 2, "ddp"),
    ]
    result = run_cli_process(args, cwd=directory, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_checkpoint(directory)


def test_ddp_equals_one_process_on_the_union_of_the_ranks_batches(ddp_run, tmp_path):
    single = one_process_run(tmp_path, batch_size=8, shards=2)
    distributed, reference = parameters(ddp_run), parameters(single)
    initial = build(retrieval_args("setting1_delta", "--trainer.logger", "false")).model.state_dict()
    for name, value in reference.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert best_eval_loss(ddp_run) == pytest.approx(best_eval_loss(single), rel=1e-5)


def test_one_process_on_one_shard_differs(ddp_run, tmp_path):
    """The comparison above can fail: rank 0's shard alone is another run."""
    distributed, shard0 = parameters(ddp_run), parameters(one_process_run(tmp_path, batch_size=4, shards=1))
    assert any(not torch.allclose(distributed[name], shard0[name], atol=1e-4) for name in shard0)


def test_a_rank_with_several_shards_holds_the_ranks_batches_one_after_the_other():
    rank0, rank1 = (TrainingBatches(5, 2, 3, 10, seed=1, rank=rank) for rank in (0, 1))
    both = TrainingBatches(5, 2, 3, 10, seed=1, rank=0, shards=2)
    for field in ("keys", "values", "queries", "targets"):
        expected = torch.cat([getattr(rank0[7], field), getattr(rank1[7], field)])
        assert torch.equal(getattr(both[7], field), expected), field


def test_batch_size_must_split_into_shards():
    with pytest.raises(ValueError, match=r"batch_size=6, shards_per_rank=4"):
        RetrievalDataModule(batch_size=6, shards_per_rank=4)


# 2 processes × 3 windows per batch = 6 does not divide the windows of the valid split (asserted below)
SLIDING = ["--data.init_args.eval_mode", "sliding", "--data.init_args.eval_segment_length", "16"]
SLIDING += ["--data.init_args.eval_stride", "5", "--data.init_args.eval_batch_size", "3"]
TINY_LM = [
    "--model.init_args.backbone.n_layers=1",
    "--model.init_args.backbone.d_model=16",
    "--model.init_args.backbone.n_heads=2",
]
TINY_LM += ["--model.init_args.backbone.d_head=8", "--model.init_args.backbone.d_ff=16"]


@pytest.fixture(scope="module")
def sliding_single(tmp_path_factory):
    """``validate`` of a tiny delta-rule model (seeded init) in sliding windows, in this process (its
    config.yaml written to its own directory); the token caches are then ready for the DDP run."""
    directory = tmp_path_factory.mktemp("sliding")
    corpus = write_synthetic_corpus(directory / "corpus", train_lines=40, valid_lines=6, test_lines=1)
    args = [*SLIDING, *TINY_LM, "--trainer.logger", "false", "--trainer.default_root_dir", str(directory)]
    return main(["validate", *lm_args("lm_synthetic_delta", corpus, *args)]), corpus


def ddp_sliding_loss(corpus, directory) -> float:
    """``valid/loss`` of the same ``validate`` on 2 CPU processes, as the CSV logger wrote it."""
    args = [*SLIDING, *TINY_LM, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]
    args += ["--trainer.logger.init_args.save_dir", str(directory)]
    result = run_cli_process(["validate", *lm_args("lm_synthetic_delta", corpus, *args)], cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = directory.glob("*/version_0/metrics.csv")
    with open(metrics, newline="") as rows:
        (row,) = [row for row in csv.DictReader(rows) if row.get("valid/loss")]
    return float(row["valid/loss"])


def test_ddp_sliding_validation_equals_one_process(sliding_single, tmp_path):
    cli, corpus = sliding_single
    windows = cli.datamodule.datasets["valid"].num_windows
    assert windows % 2 == 1 and windows % (2 * 3) != 0  # rank 1's share ends with a padding window
    single = float(cli.trainer.callback_metrics["valid/loss"])
    assert ddp_sliding_loss(corpus, tmp_path) == pytest.approx(single, rel=1e-6, abs=0)


def shares_mean_nll(cli, *, score_padding: bool) -> float:
    """The mean NLL over both DDP ranks' shares of the windows, in this process; ``score_padding``
    scores each padding window like the last window, which it repeats (the mistake to catch)."""
    metric, data, model = TokenNLL(), cli.datamodule, cli.model.eval()
    for rank in range(2):
        share = data.windows("valid", rank=rank, world_size=2)
        if score_padding:
            _, score_from = sliding_windows(len(share.stream), share.window_length, data.eval_stride)
            padding = share.score_from == share.window_length
            share.score_from = np.where(padding, score_from[-1], share.score_from)
        with torch.no_grad():
            for index in range(len(share)):
                model.evaluation_step(share[index], "valid", metric)
    return float(metric.compute())


def test_scoring_the_padding_windows_would_change_the_loss(sliding_single):
    """The comparison above can fail: ranks that scored their padding windows give another loss."""
    cli, _ = sliding_single
    single = float(cli.trainer.callback_metrics["valid/loss"])
    assert shares_mean_nll(cli, score_padding=False) == pytest.approx(single, rel=1e-6, abs=0)
    assert shares_mean_nll(cli, score_padding=True) != pytest.approx(single, rel=1e-4, abs=0)
