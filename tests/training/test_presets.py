"""Trainer presets (conf/trainer/) stacked after a task config: ``--config <task> --trainer <preset>``
sets the preset's keys and keeps everything else of the task's trainer section (callbacks, logger,
steps, clipping). Presets that can run on this machine are also instantiated."""

from __future__ import annotations

import pytest
import yaml
from cli_runs import REPO, build, retrieval_args

from fwp.training.cli import main

PRESETS = sorted((REPO / "conf" / "trainer").glob("*.yaml"))
TASKS = {
    "retrieval": REPO / "conf" / "retrieval" / "setting1.yaml",
    "translation": REPO / "conf" / "mt" / "wmt14_big.yaml",
    "language_modeling": REPO / "conf" / "lm" / "wt103_small.yaml",
}


DDP_GPU = REPO / "conf" / "trainer" / "ddp_gpu.yaml"


def printed_trainer(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)["trainer"]


def test_the_documented_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"cpu", "gpu", "ddp_cpu", "ddp_gpu", "fsdp_gpu", "slurm_multinode", "bf16", "fp16"} <= names


def test_presets_never_replace_the_task_callbacks_or_logger():
    for preset in PRESETS:
        assert not {"callbacks", "logger"} & set(yaml.safe_load(preset.read_text())), preset.name


@pytest.mark.parametrize(
    ("task", "preset"),
    [("retrieval", p) for p in PRESETS] + [(t, DDP_GPU) for t in TASKS if t != "retrieval"],
    ids=lambda value: getattr(value, "stem", value),
)
def test_preset_stacks_on_a_task_config(capsys, task, preset):
    config = str(TASKS[task])
    plain = printed_trainer(capsys, "--config", config)
    stacked = printed_trainer(capsys, "--config", config, "--trainer", str(preset))
    own = yaml.safe_load(preset.read_text())
    for key, value in stacked.items():
        if key not in own:
            assert value == plain[key], key
    for key, value in own.items():
        assert summary(stacked[key]) == summary(value), key


def summary(value):
    """A value with every ``{class_path, init_args}`` reduced to its class path."""
    if isinstance(value, dict):
        return value["class_path"]
    if isinstance(value, list):
        return [summary(item) for item in value]
    return value


def test_presets_stack_on_each_other(capsys):
    stacked = printed_trainer(
        capsys,
        "--config",
        str(TASKS["retrieval"]),
        "--trainer",
        str(REPO / "conf/trainer/ddp_gpu.yaml"),
        "--trainer",
        str(REPO / "conf/trainer/bf16.yaml"),
    )
    assert (stacked["strategy"], stacked["accelerator"], stacked["precision"]) == ("ddp", "gpu", "bf16-mixed")


@pytest.mark.parametrize("preset", ["cpu", "ddp_cpu", "bf16"])
def test_cpu_presets_instantiate(preset):
    cli = build(retrieval_args("setting1_delta", "--trainer", str(REPO / f"conf/trainer/{preset}.yaml")))
    trainer = cli.trainer
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer.num_devices == (2 if preset == "ddp_cpu" else 1)
    assert trainer.precision == ("bf16-mixed" if preset == "bf16" else "32-true")
    assert (
        len([c for c in trainer.callbacks if type(c).__name__ in ("EarlyStopping", "ModelCheckpoint")]) == 2
    )
