"""The retrieval task through the project CLI: every documented experiment runs one step; bad input is
named."""

from pathlib import Path

import pytest

from fwp.training.cli import main
from tests.experiments import documented_experiments, experiment_arguments

CONF = Path(__file__).resolve().parents[2] / "conf" / "retrieval"
EXPERIMENTS = sorted(name for name in documented_experiments() if name.startswith("setting"))


def test_every_experiment_is_found():
    assert len(EXPERIMENTS) >= 19


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_runs_one_step(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        *experiment_arguments(name),
        "--trainer.fast_dev_run",
        "1",
        "--data.init_args.num_keys",
        "5",
    ]
    cli = main(args)
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.num_keys == 5


def run_expecting_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def test_unknown_attention_name_is_named(capsys):
    config = str(CONF / "setting1.yaml")
    err = run_expecting_error(["fit", "--config", config, "--model.init_args.attention", "fastest"], capsys)
    assert "unknown attention 'fastest'" in err
    assert "delta" in err and "softmax" in err


def test_invalid_number_of_keys_is_named(capsys):
    config = str(CONF / "setting1.yaml")
    err = run_expecting_error(["fit", "--config", config, "--data.init_args.num_keys", "0"], capsys)
    assert "num_keys=0" in err


def test_unknown_yaml_key_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF / "setting1.yaml").read_text().replace("d_key: 64", "d_keys: 64"))
    bad.with_name("trainer.yaml").write_text((CONF / "trainer.yaml").read_text())
    err = run_expecting_error(["fit", "--config", str(bad)], capsys)
    assert "d_keys" in err


def test_print_config_shows_the_linked_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *experiment_arguments("setting2_dpfp_delta"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "tasks.retrieval.module.RetrievalModel" in out and "setting: 2" in out
