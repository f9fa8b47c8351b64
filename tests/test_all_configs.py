"""Every experiment config under conf/ (a YAML with a top-level ``model``) parses through the CLI.

Running one step is tested per task (tests/<task>/test_*configs*.py or test_cli.py), with the tiny
overrides each task needs; this test guarantees no config file is left out of parsing.
"""

from pathlib import Path

import pytest
import yaml

from fwp.training.cli import main

CONF = Path(__file__).resolve().parents[1] / "conf"


def experiment_configs() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def test_there_are_experiment_configs():
    assert len(experiment_configs()) >= 15


@pytest.mark.parametrize("config", experiment_configs(), ids=lambda p: str(p.relative_to(CONF)))
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "class_path" in capsys.readouterr().out
