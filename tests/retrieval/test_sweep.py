"""The capacity sweep writes a CSV row per (config, S) and a plot."""

import csv
from pathlib import Path

import pytest

from tasks.retrieval.sweep import CSV_FIELDS, run_sweep

CONF = Path(__file__).resolve().parents[2] / "conf" / "retrieval"


def test_sweep_writes_csv_plot_and_tensorboard_image(tmp_path):
    configs = [str(CONF / "setting1_linear.yaml"), str(CONF / "setting1_delta.yaml")]
    run_sweep(configs, [3, 5], tmp_path, max_steps=2, workers=1)
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_FIELDS
    assert {(Path(r["config"]).stem, int(r["num_keys"])) for r in rows} == {
        (name, s) for name in ("setting1_linear", "setting1_delta") for s in (3, 5)
    }
    assert all(float(r["final_eval_loss"]) >= 0 and int(r["steps"]) == 2 for r in rows)
    assert (tmp_path / "final_eval_loss.png").stat().st_size > 1000
    assert any((tmp_path / "tensorboard").iterdir())


def test_sweep_rejects_missing_config_and_bad_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        run_sweep([str(tmp_path / "nope.yaml")], [4], tmp_path, max_steps=1, workers=1)
    with pytest.raises(ValueError, match="num_keys"):
        run_sweep([str(CONF / "setting1_linear.yaml")], [0], tmp_path, max_steps=1, workers=1)
