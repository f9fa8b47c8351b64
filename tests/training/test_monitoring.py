"""What a user watches in TensorBoard (``fwp.training.monitoring``) and what ``test`` writes, for every task:
the gradient norm before clipping, throughput, text samples at each validation, ``hp_metric`` = the
best validation metric, MT test hypotheses beside the scores; the SLURM preset's small logs."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from cli_runs import QUIET, task_args
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fwp.training.cli import main
from fwp.training.monitoring import gradient_norm

REPO = Path(__file__).resolve().parents[2]
SHORT_FIT = [
    "--trainer.max_steps", "4",
    "--trainer.val_check_interval", "2",
    "--trainer.log_every_n_steps", "1",
    "--trainer.limit_val_batches", "2",
    "--throughput.window_size", "2",
    "--seed_everything", "3",
]  # fmt: skip


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs write under ``tmp_path`` (the configs' ``runs/``)."""
    monkeypatch.chdir(tmp_path)


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> list[float]:
    return [event.value for event in accumulator.Scalars(tag)]


def texts(accumulator: EventAccumulator, tag: str) -> list[str]:
    return [event.tensor_proto.string_val[0].decode() for event in accumulator.Tensors(f"{tag}/text_summary")]


VALIDATION_METRIC = {"retrieval": ("valid/loss", min), "language_modeling": ("valid/ppl", min)}
VALIDATION_METRIC["translation"] = ("valid/sacrebleu", max)


@pytest.mark.parametrize("task", ["retrieval", "language_modeling", "translation"])
def test_every_task_logs_grad_norm_throughput_and_its_best_metric(task: str, tmp_path: Path) -> None:
    """Before: no task logged a gradient norm, MT no throughput, and ``hp_metric`` stayed −1."""
    cli = main(["fit", *task_args(task, tmp_path), *SHORT_FIT, *QUIET])
    logged = events(Path(cli.trainer.log_dir))
    norms = scalars(logged, "train/grad_norm")
    assert len(norms) == 4 and all(math.isfinite(n) and n > 0 for n in norms)
    per_second = scalars(logged, "train/device/items_per_sec")
    assert per_second and all(rate > 0 for rate in per_second)
    assert scalars(logged, "train/samples")[-1] > 0 and scalars(logged, "train/lengths")[-1] > 0
    name, best = VALIDATION_METRIC[task]
    values = scalars(logged, name)
    assert len(values) == 2
    running_best = [best(values[: i + 1]) for i in range(len(values))]
    assert scalars(logged, "hp_metric")[-2:] == pytest.approx(running_best)


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_each_validation_logs_text_samples(task: str, tmp_path: Path) -> None:
    cli = main(["fit", *task_args(task, tmp_path), *SHORT_FIT, *QUIET])
    samples = texts(events(Path(cli.trainer.log_dir)), "valid/samples")
    assert len(samples) == 2, "one text per validation run"
    if task == "language_modeling":
        assert all(text.startswith("**prompt:** ") and "**sample 1:** " in text for text in samples)
        generated = samples[0].split("**sample 1:** ")[1].split()
        assert len(generated) == 5, "max_new_tokens words of the word tokenizer"
        assert "&lt;eos&gt;" in samples[0] and "<eos>" not in samples[0], "TensorBoard hides raw <eos> tags"
    else:
        sentences = samples[0].split("\n\n")
        assert len(sentences) == 3
        labels = [[line.split(" ")[0] for line in sentence.split("  \n")] for sentence in sentences]
        assert labels == [["**source:**", "**hypothesis:**", "**reference:**"]] * 3
        references = (tmp_path / "mt" / "valid.tgt").read_text().splitlines()
        assert sentences[0].split("**reference:** ")[1] in references


class GradientsAfterStep(L.Callback):
    """The 2-norm of the gradients the optimizer applied (after clipping) at each step."""

    def __init__(self) -> None:
        self.applied: list[float] = []
        self.logged: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.applied.append(float(gradient_norm(trainer, trainer.optimizers[0])))
        self.logged.append(float(trainer.callback_metrics["train/grad_norm"]))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_mt_grad_norm_is_taken_after_token_normalisation_and_before_clipping(clip, tmp_path: Path) -> None:
    """MT rescales its gradients (``loss_normalization: tokens``) in its own ``on_before_optimizer_step``,
    after every callback's: a callback measuring there would log the unnormalised norm."""
    args = [*task_args("translation", tmp_path), *SHORT_FIT, *QUIET]
    args += [
        "--trainer.gradient_clip_val",
        "null" if clip is None else str(clip),
        "--trainer.limit_val_batches",
        "0",
    ]
    cli = main(args, run=False)
    recorder = GradientsAfterStep()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(recorder.logged) == 4
    if clip is None:
        assert recorder.logged == pytest.approx(recorder.applied, rel=1e-5)
    else:
        assert all(norm > clip for norm in recorder.logged)
        assert recorder.applied == pytest.approx([clip] * 4, rel=1e-3)


def test_mt_test_writes_its_hypotheses_in_input_order_beside_the_scores(tmp_path: Path) -> None:
    """``test`` printed BLEU and logged it to TensorBoard, but the translations it scored were lost."""
    args = ["test", *task_args("translation", tmp_path), *QUIET, "--data.init_args.eval_max_tokens", "64"]
    cli = main(args)
    log_dir = Path(cli.trainer.log_dir)
    written = (log_dir / "test_hypotheses.txt").read_text(encoding="utf-8").splitlines()
    assert list(log_dir.glob("events.out.tfevents.*")), "the scores' TensorBoard file is beside it"
    data, model = cli.datamodule, cli.model.eval()
    expected = {}
    with torch.no_grad():
        for batch in data.test_dataloader():
            translated = model.translate(batch["src"], batch["src_padding_mask"], beam_size=1)
            expected.update(zip(batch["ids"].tolist(), map(data.decode, translated), strict=True))
    assert len(expected) == 12 and len(data.test_dataloader()) > 1
    assert written == [expected[i] for i in range(12)]
    again = main([*args, "--trainer.logger.init_args.version", log_dir.name])
    assert Path(again.trainer.log_dir) == log_dir
    assert (log_dir / "test_hypotheses-v1.txt").read_text(encoding="utf-8").splitlines() == written


def test_the_slurm_preset_turns_the_progress_bar_off(capsys) -> None:
    """A 24 h job's --output file grew by one progress-bar line per step."""
    preset = REPO / "conf" / "trainer" / "slurm_multinode.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "conf/lm/wt103_small.yaml"), "--trainer", str(preset),
              "--print_config"])  # fmt: skip
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["enable_progress_bar"] is False
    assert "--trainer conf/trainer/slurm_multinode.yaml" in (REPO / "scripts/slurm_train.sbatch").read_text()


def test_mt_evaluation_without_a_logger_writes_no_hypotheses_file(tmp_path: Path) -> None:
    """Without a logger there is no run directory: ``validate`` wrote ``valid_hypotheses.txt`` into the
    working directory (the test suite left a dozen in the repository root)."""
    args = [*task_args("translation", tmp_path), *QUIET, "--data.init_args.eval_max_tokens", "64"]
    main(["validate", *args, "--trainer.logger", "false"])
    assert not list(tmp_path.rglob("*_hypotheses*.txt"))
