"""The retrieval task through the project CLI: every config runs one step; bad input is named."""

from pathlib import Path

import pytest

from fwp.training.cli import main

CONF = Path(__file__).resolve().parents[2] / "conf" / "retrieval"
EXPERIMENTS = sorted(p for p in CONF.glob("*.yaml") if p.name != "trainer.yaml")


def test_every_experiment_config_is_found():
    assert len(EXPERIMENTS) >= 15


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_config_runs_one_step(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(
        ["fit", "--config", str(config), "--trainer.fast_dev_run", "1", "--data.init_args.num_keys", "5"]
    )
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.num_keys == 5


def run_expecting_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def test_unknown_attention_name_is_named(capsys):
    config = str(CONF / "setting1_delta.yaml")
    err = run_expecting_error(["fit", "--config", config, "--model.init_args.attention", "fastest"], capsys)
    assert "unknown attention 'fastest'" in err
    assert "delta" in err and "softmax" in err


def test_invalid_number_of_keys_is_named(capsys):
    config = str(CONF / "setting1_delta.yaml")
    err = run_expecting_error(["fit", "--config", config, "--data.init_args.num_keys", "0"], capsys)
    assert "num_keys=0" in err


def test_unknown_yaml_key_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF / "setting1_delta.yaml").read_text().replace("d_key: 64", "d_keys: 64"))
    bad.with_name("trainer.yaml").write_text((CONF / "trainer.yaml").read_text())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "setting1.yaml").write_text((CONF / "data" / "setting1.yaml").read_text())
    err = run_expecting_error(["fit", "--config", str(bad)], capsys)
    assert "d_keys" in err


def test_print_config_shows_the_linked_model(capsys):
    config = str(CONF / "setting2_dpfp_delta.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "tasks.retrieval.module.RetrievalModel" in out and "setting: 2" in out
