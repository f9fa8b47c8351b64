"""``--ckpt_path`` with options given: the user's values win over the checkpoint's for everything that
does not shape the weights; an architecture value that disagrees with the checkpoint, or a checkpoint
of another task, is an error naming what disagrees.

Bug caught: LightningCLI's ``_parse_ckpt_path`` parsed the checkpoint's saved hyperparameters over the
command line and the ``--config`` files, so ``test``/``predict`` ignored ``beam_size``, ``max_len_a``,
``max_len_b``, ``predict_output``, ``max_new_tokens``, ``temperature``... and silently swapped the model
for the checkpoint's class when given another task's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fwp.training.cli import main
from tasks.language_modeling.synthetic import write_synthetic_corpus
from tasks.translation.synthetic import write_synthetic_parallel_corpus

CONF = Path(__file__).resolve().parents[2] / "conf"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# After --config (a later option wins): two steps, one evaluation of one batch.
SHORT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"]

# MT: the values the checkpoint is trained with, and other values given to test/predict.
MT_TRAINED = {"beam_size": "3", "max_len_a": "2.0", "max_len_b": "30", "warmup_init_lr": "1e-05"}
MT_GIVEN = {"beam_size": 1, "max_len_a": 0.0, "max_len_b": 1}
LM_TRAINED = {"max_new_tokens": "7", "temperature": "1.5", "top_k": "5"}
LM_GIVEN = {"max_new_tokens": 3, "temperature": 0.0, "top_k": 2}


def model_options(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--model.init_args.{key}", str(value))]


def mt_args(directory: Path, sizes: bool = True) -> list[str]:
    """A tiny translation model on a tiny generated corpus, logs under ``directory/runs``: the
    ``synthetic`` backbone preset with d_model 32 and d_ff 64 (``sizes`` False: the preset's own)."""
    tiny = ["--model.init_args.backbone.d_model", "32", "--model.init_args.backbone.d_ff", "64"]
    return [
        "--config", str(CONF / "mt" / "synthetic.yaml"),
        "--data.init_args.data_dir", str(directory / "corpus"),
        "--data.init_args.bpe_vocab_size", "300",
        *(tiny if sizes else []),
        "--trainer.logger.init_args.save_dir", str(directory / "runs"),
        *QUIET,
    ]  # fmt: skip


def lm_args(directory: Path) -> list[str]:
    return [
        "--config", str(CONF / "lm" / "synthetic.yaml"),
        "--data.init_args.data_dir", str(directory / "corpus"),
        "--data.init_args.segment_length", "16",
        "--trainer.logger.init_args.save_dir", str(directory / "runs"),
        *QUIET,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory) -> tuple[Path, Path]:
    """The directory of a 2-step translation run trained with ``MT_TRAINED``, and its last.ckpt."""
    directory = tmp_path_factory.mktemp("mt")
    write_synthetic_parallel_corpus(directory / "corpus", n_train=120, n_valid=8, n_test=8)
    (directory / "source.txt").write_text("the cat sees a dog .\na man walks .\n")
    main(["fit", *mt_args(directory), *SHORT, *model_options(MT_TRAINED)])
    return directory, next(directory.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("lm")
    write_synthetic_corpus(directory / "corpus", train_lines=60, valid_lines=10, test_lines=10)
    main(["fit", *lm_args(directory), *SHORT, *model_options(LM_TRAINED)])
    return directory, next(directory.rglob("last.ckpt"))


TASKS = {"mt": ("mt_run", mt_args, MT_GIVEN), "lm": ("lm_run", lm_args, LM_GIVEN)}


@pytest.mark.parametrize("subcommand", ["test", "predict"])
@pytest.mark.parametrize("task", list(TASKS))
def test_inference_options_given_win_over_the_checkpoint(task, subcommand, request):
    """MT decoding (``beam_size``, ``max_len_a``, ``max_len_b``), LM sampling (``max_new_tokens``,
    ``temperature``, ``top_k``): the model is built with the values given, not the checkpoint's."""
    fixture, arguments, given = TASKS[task]
    directory, checkpoint = request.getfixturevalue(fixture)
    cli = main([subcommand, *arguments(directory), "--ckpt_path", str(checkpoint), *model_options(given)])
    for key, value in given.items():
        assert cli.model.hparams[key] == value, key


def test_mt_options_not_given_come_from_the_checkpoint(mt_run):
    """What neither the command line nor the config names is the checkpoint's (not the class default):
    Lightning's behaviour, kept by the re-parse with the checkpoint's values as defaults."""
    directory, checkpoint = mt_run
    cli = main(["validate", *mt_args(directory), "--ckpt_path", str(checkpoint)])
    assert cli.model.hparams.warmup_init_lr == float(MT_TRAINED["warmup_init_lr"])


def test_mt_test_decodes_with_the_beam_size_given(mt_run, monkeypatch):
    """The checkpoint's beam is 3; ``test`` given 1 decodes every batch greedily."""
    from tasks.translation.module import TranslationModel

    beams: list[int] = []
    translate = TranslationModel.translate

    def recording_translate(self, *args, beam_size: int, **kwargs):
        beams.append(beam_size)
        return translate(self, *args, beam_size=beam_size, **kwargs)

    monkeypatch.setattr(TranslationModel, "translate", recording_translate)
    directory, checkpoint = mt_run
    main(["test", *mt_args(directory), "--ckpt_path", str(checkpoint), "--model.init_args.beam_size", "1"])
    assert beams and set(beams) == {1}


def test_mt_predict_obeys_length_limits_and_output_file_given(mt_run):
    """The checkpoint allows ``2 · src_len + 30`` tokens and prints to stdout; given ``a = 0, b = 1``
    and an output file, every translation is at most one token long, in that file."""
    directory, checkpoint = mt_run
    predict = ["predict", *mt_args(directory), "--ckpt_path", str(checkpoint)]
    predict += ["--data.init_args.predict_file", str(directory / "source.txt")]
    unlimited, limited = directory / "unlimited.txt", directory / "limited.txt"
    main([*predict, "--model.init_args.predict_output", str(unlimited)])
    main([*predict, *model_options(MT_GIVEN), "--model.init_args.predict_output", str(limited)])
    limited_lines = limited.read_text().splitlines()
    assert len(limited_lines) == 2 and all(len(line.split()) <= 1 for line in limited_lines)
    assert limited_lines != unlimited.read_text().splitlines()


def test_lm_predict_samples_with_the_options_given(lm_run, monkeypatch):
    """``predict`` draws ``max_new_tokens`` tokens at the ``temperature`` given (the checkpoint: 7, 1.5)."""
    import tasks.language_modeling.module as module

    calls: list[dict] = []
    sample = module.sample

    def recording_sample(*args, **kwargs):
        calls.append(kwargs)
        return sample(*args, **kwargs)

    monkeypatch.setattr(module, "sample", recording_sample)
    directory, checkpoint = lm_run
    main(["predict", *lm_args(directory), "--ckpt_path", str(checkpoint), *model_options(LM_GIVEN)])
    assert calls
    for call in calls:
        assert (call["max_new_tokens"], call["temperature"]) == (3, 0.0)


def test_architecture_conflict_is_an_error_naming_each_argument(mt_run, capsys):
    directory, checkpoint = mt_run
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                *mt_args(directory),
                "--ckpt_path",
                str(checkpoint),
                "--model.init_args.backbone.d_model",
                "48",
                "--model.init_args.backbone.n_heads",
                "2",
            ]
        )
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fwp: error:")]
    assert "CheckpointMismatchError" in line and str(checkpoint) in line
    assert "backbone.d_model: given 48, checkpoint 32" in line
    assert "backbone.n_heads: given 2, checkpoint 4" in line


def test_vocabulary_from_the_data_must_match_the_checkpoint(mt_run, capsys):
    """The vocabulary size is linked from the data module: another BPE size conflicts too."""
    directory, checkpoint = mt_run
    with pytest.raises(SystemExit):
        main(
            [
                "test",
                *mt_args(directory),
                "--data.init_args.bpe_vocab_size",
                "320",
                "--ckpt_path",
                str(checkpoint),
            ]
        )
    assert "vocab_size: given 320, checkpoint 300" in capsys.readouterr().err


def test_checkpoint_of_another_task_is_an_error_naming_both_classes(lm_run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, checkpoint = lm_run
    retrieval = ["--config", str(CONF / "retrieval" / "setting1.yaml"), *QUIET]
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *retrieval, "--ckpt_path", str(checkpoint)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "tasks.language_modeling.module.LanguageModel" in error
    assert "tasks.retrieval.module.RetrievalModel" in error


def test_a_named_preset_counts_as_given(mt_run, capsys):
    """The base config names the backbone preset ``synthetic`` (d_model 64, d_ff 256); the checkpoint
    was trained with d_model 32 and d_ff 64 given over it. The preset's values are the user's, so they
    are not replaced by the checkpoint's: they disagree with it, by name."""
    directory, checkpoint = mt_run
    with pytest.raises(SystemExit):
        main(["validate", *mt_args(directory, sizes=False), "--ckpt_path", str(checkpoint)])
    error = capsys.readouterr().err
    assert (
        "backbone.d_model: given 64, checkpoint 32" in error
        and "backbone.d_ff: given 256, checkpoint 64" in error
    )


def flat_checkpoint(checkpoint: Path, path: Path, renamed: dict[str, str], absent: set[str]) -> Path:
    """``checkpoint`` with its hyperparameters in the layout written before the backbone config: the
    backbone fields flat beside the task's arguments, under their old names (``renamed``), without the
    fields the task did not take then (``absent``). The weights are the same (their keys did not
    change)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = dict(saved["hyper_parameters"])
    backbone = hparams.pop("backbone")
    hparams |= {
        renamed.get(key, key): value for key, value in backbone.items() if key not in {"preset", *absent}
    }
    torch.save(saved | {"hyper_parameters": hparams}, path)
    return path


def test_checkpoint_with_flat_hyperparameters_loads_and_is_checked(mt_run, capsys, tmp_path):
    """A translation checkpoint of the layout before ``backbone:`` (``d_model``, ``position_limit``, ...
    beside ``beam_size``) evaluates with today's config, and its backbone fields are still compared:
    another ``n_heads`` (which changes no weight shape) is refused by name, not run."""
    directory, checkpoint = mt_run
    flat = flat_checkpoint(
        checkpoint, tmp_path / "flat.ckpt", {"max_positions": "position_limit"}, {"activation"}
    )
    hparams = torch.load(flat, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "backbone" not in hparams and hparams["d_model"] == 32 and "position_limit" in hparams
    cli = main(["validate", *mt_args(directory), "--ckpt_path", str(flat)])
    assert cli.model.hparams.backbone["d_model"] == 32
    assert "valid/loss" in cli.trainer.callback_metrics
    with pytest.raises(SystemExit):
        main(
            [
                "validate",
                *mt_args(directory),
                "--ckpt_path",
                str(flat),
                "--model.init_args.backbone.n_heads",
                "2",
            ]
        )
    assert "backbone.n_heads: given 2, checkpoint 4" in capsys.readouterr().err
