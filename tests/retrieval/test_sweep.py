"""The capacity sweep: incremental results, seeds, stop reasons, overrides, labels and plots."""

import csv
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from fwp.training import cli
from tasks.retrieval import sweep
from tasks.retrieval.data import EVAL_STREAM, EvaluationBatch
from tasks.retrieval.module import RetrievalModel, squared_error
from tasks.retrieval.sweep import (
    CSV_FIELDS,
    composition_arguments,
    run_name,
    run_sweep,
    stop_reason,
    system_label,
)
from tests.experiments import experiment_arguments

CONF = Path(__file__).resolve().parents[2] / "conf" / "retrieval"
TINY = ["--trainer.max_steps", "2", "--model.init_args.d_key", "8"]
SETTING1, SETTING2 = str(CONF / "setting1.yaml"), str(CONF / "setting2.yaml")
LINEAR = f"{SETTING1}+model.attention=linear"


def built_model(arguments: list[str]) -> RetrievalModel:
    """The model the CLI builds from ``arguments`` (nothing run)."""
    return cli.main([*arguments, "--trainer.logger", "false"], run=False).model


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_sweep_writes_rows_summary_plots_and_tensorboard_image(tmp_path):
    run_sweep([LINEAR, SETTING1], [3, 5], tmp_path, seeds=2, overrides=TINY)
    rows = read_rows(tmp_path / "results.csv")
    assert tuple(rows[0]) == CSV_FIELDS
    assert {(r["config"], int(r["num_keys"]), int(r["seed"])) for r in rows} == {
        (config, s, seed) for config in (LINEAR, SETTING1) for s in (3, 5) for seed in (1, 2)
    }
    assert all(int(r["steps"]) == 2 and r["stop_reason"] == "max_steps" for r in rows)
    assert {r["overrides"] for r in rows} == {" ".join(TINY)}
    summary = read_rows(tmp_path / "summary.csv")
    for point in summary:
        losses = [float(r["final_eval_loss"]) for r in rows if (r["config"], r["num_keys"]) == (
            point["config"], point["num_keys"])]  # fmt: skip
        assert int(point["runs"]) == 2
        assert float(point["mean_final_eval_loss"]) == pytest.approx(sum(losses) / 2)
        assert float(point["std_final_eval_loss"]) == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5)
    assert {(r["config"], r["system"]) for r in rows} == {
        (LINEAR, "Linear (elu+1), sum rule"),
        (SETTING1, "DPFP ν=2, delta rule"),
    }
    runs = {path.name for path in (tmp_path / "runs").iterdir()}
    assert runs == {
        f"{name}_S{s}_seed{seed}"
        for name in ("setting1+attention=linear", "setting1")
        for s in (3, 5)
        for seed in (1, 2)
    }
    for suffix in (".png", ".pdf"):
        assert (tmp_path / f"final_eval_loss{suffix}").stat().st_size > 1000
    assert any((tmp_path / "tensorboard").iterdir())


def test_final_loss_is_the_trained_model_on_that_steps_evaluation_sequences(tmp_path, monkeypatch):
    """The row's loss is the model's loss on the evaluation drawn at its last step (the previous test
    only checked ``loss >= 0``, which a squared error always satisfies)."""
    models = []
    original = cli.main

    def keep_model(args):
        result = original(args)
        models.append(result.model)
        return result

    monkeypatch.setattr(cli, "main", keep_model)
    (result,) = run_sweep([LINEAR], [4], tmp_path, overrides=TINY)
    model: RetrievalModel = models[0].eval()
    seed, step = 1, 2
    evaluation = EvaluationBatch(4, 1, 20, seed, EVAL_STREAM, lambda: step, max_queries=200, chunk=32)
    batch = next(iter(evaluation))
    with torch.no_grad():
        output, _ = model(batch.keys, batch.values, batch.queries)
    expected = squared_error(output, batch.targets, batch.query_weight).item()
    assert result.final_eval_loss == pytest.approx(expected, rel=1e-5)


def test_a_rerun_skips_finished_runs_and_a_crash_keeps_earlier_rows(tmp_path, monkeypatch):
    config = LINEAR
    real_run_job = sweep.run_job
    calls = []

    def crash_at_s5(job):
        calls.append(job.num_keys)
        if job.num_keys == 5:
            raise RuntimeError("crash")
        return real_run_job(job)

    monkeypatch.setattr(sweep, "run_job", crash_at_s5)
    with pytest.raises(RuntimeError):
        run_sweep([config], [3, 5], tmp_path, overrides=TINY)
    assert [int(r["num_keys"]) for r in read_rows(tmp_path / "results.csv")] == [3]
    monkeypatch.setattr(sweep, "run_job", lambda job: calls.append(job.num_keys) or real_run_job(job))
    results = run_sweep([config], [3, 5], tmp_path, overrides=TINY)
    assert calls == [3, 5, 5]
    assert [r.num_keys for r in results] == [3, 5]
    assert [int(r["num_keys"]) for r in read_rows(tmp_path / "results.csv")] == [3, 5]


def test_overrides_reach_every_run(tmp_path):
    results = run_sweep(
        [f"{SETTING2}+model.attention={{name: dpfp, nu: 1}}"],
        [3],
        tmp_path,
        overrides=["--trainer.max_steps", "3"],
    )
    assert results[0].steps == 3


@pytest.mark.parametrize(
    ("reason", "max_steps", "step", "expected"),
    [
        (EarlyStoppingReason.STOPPING_THRESHOLD, 100, 40, "threshold"),
        (EarlyStoppingReason.PATIENCE_EXHAUSTED, 100, 40, "patience"),
        (EarlyStoppingReason.NOT_STOPPED, 100, 100, "max_steps"),
        (EarlyStoppingReason.NOT_STOPPED, 100, 40, "end_of_data"),
    ],
)
def test_stop_reason(reason, max_steps, step, expected):
    trainer = SimpleNamespace(
        early_stopping_callback=SimpleNamespace(stopping_reason=reason), max_steps=max_steps, global_step=step
    )
    assert stop_reason(trainer) == expected


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("setting1_softmax", "Softmax"),
        ("setting1_favor128", "FAVOR+ m=128, sum rule"),
        ("setting1_dpfp3", "DPFP ν=3, sum rule"),
        ("setting2_dpfp_delta", "DPFP ν=1, delta rule"),
        ("setting2_fwm", "tanh, FWM rule"),
        ("setting1_deltanet", "l2 + conv 4, delta rule, output gate"),
        ("setting2_gated_deltanet", "l2 + conv 4, gated delta rule, output gate"),
        ("setting1_gla", "identity, gated sum rule, output gate"),
    ],
)
def test_plot_labels_name_the_system(name, label):
    assert system_label(built_model(experiment_arguments(name)).attention) == label


def test_a_composition_is_its_files_and_overrides_in_order(tmp_path):
    """``BASE+OVERLAY+key=value`` runs ``fit`` with ``--config BASE --config OVERLAY --key=value`` (a
    later part wins), and its run directory is named after every part."""
    fwm = str(CONF / "fwm.yaml")
    composition = f"{SETTING2}+{fwm}+model.attention={{name: dpfp, nu: 1}}"
    assert composition_arguments(composition) == [
        "--config", SETTING2, "--config", fwm, "--model.attention={name: dpfp, nu: 1}",
    ]  # fmt: skip
    assert run_name(composition) == "setting2+fwm+attention=name_dpfp_nu_1"
    assert run_name(SETTING1) == "setting1"
    model = built_model(composition_arguments(composition))
    assert model.hparams.attention == {"name": "dpfp", "nu": 1} and model.hparams.lr == 0.0001
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        composition_arguments(f"{SETTING1}+{tmp_path / 'nope.yaml'}")
    with pytest.raises(FileNotFoundError, match=r"model\.attention=linear"):
        composition_arguments("model.attention=linear")  # the first part must be a file


def test_runs_obey_omp_num_threads(monkeypatch):
    """The sweep set torch to cores // workers threads even with OMP_NUM_THREADS=1."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert sweep.threads_per_worker(1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert sweep.threads_per_worker(1) == max(1, os.cpu_count() or 1)


def test_sweep_rejects_missing_config_and_bad_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        run_sweep([str(tmp_path / "nope.yaml")], [4], tmp_path)
    with pytest.raises(ValueError, match="num_keys"):
        run_sweep([LINEAR], [0], tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        run_sweep([LINEAR], [4], tmp_path, seeds=0)
