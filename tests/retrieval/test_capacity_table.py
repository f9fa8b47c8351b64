"""bench/capacity.py: capacities from final losses and the comparison table with the official logs."""

import importlib.util
from pathlib import Path

from tasks.retrieval.sweep import Result

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "capacity.py"
spec = importlib.util.spec_from_file_location("capacity", SCRIPT)
capacity_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capacity_script)


def result(config: str, s: int, loss: float, seed: int = 1) -> Result:
    system, path = "Linear (elu+1), sum rule", f"conf/retrieval/{config}.yaml"
    return Result(system, path, s, seed, "", loss, loss, 1.0, 500, "patience", 1.0)


def test_capacity_is_the_first_s_above_the_threshold():
    assert capacity_script.capacity({80: 0.2, 20: 0.001, 40: 0.02}) == 40
    assert capacity_script.capacity({20: 0.001}) is None


def test_a_diverged_run_exceeds_the_threshold():
    """A NaN final loss (a diverged run) is a failure, not a point within the capacity."""
    assert capacity_script.capacity({20: 0.001, 40: float("nan"), 60: 0.2}) == 40


def test_table_puts_the_official_value_and_the_capacity_ratio_next_to_ours():
    results = [result("setting1_linear", 40, 0.002), result("setting1_linear", 40, 0.004, seed=2)]
    results += [result("setting1_linear", 80, 0.05)]
    text = capacity_script.table(results)
    assert "| 40 | 0.0030 ± 0.0014 (2) | patience (500), patience (500) | 0.0008 |" in text
    official = capacity_script.OFFICIAL_FINAL_LOSS["setting1_linear"]
    same_grid = capacity_script.capacity({s: official[s] for s in (40, 80)})
    row = f"| setting1_linear | 40, 80 | 80 | {same_grid} | {capacity_script.capacity(official)} |"
    assert f"{row} {80 / same_grid:.2f} |" in text


def test_table_bounds_a_capacity_beyond_every_logged_s():
    """Official runs that all stay below the threshold give "> largest S", not a missing value."""
    text = capacity_script.table([result("setting2_dpfp2_delta", 40, 0.0006)])
    official = max(capacity_script.OFFICIAL_FINAL_LOSS["setting2_dpfp2_delta"])
    assert f"| setting2_dpfp2_delta | 40 | > 40 | > 40 | > {official} | — |" in text


def test_table_shows_losses_below_1e_4_in_scientific_notation():
    """A solved run's loss near 1e-6 is shown as such, not rounded to 0.0000."""
    text = capacity_script.table([result("setting1_softmax", 400, 6.7e-6)])
    assert "| 400 | 6.7e-06 ± 0.0000 (1) | patience (500) | 2.8e-06 |" in text


def test_a_composed_config_finds_the_official_values_of_its_experiment(monkeypatch):
    """Sweeps of the composed conf/ write compositions, not file stems; before, their official column
    was always empty."""
    monkeypatch.chdir(SCRIPT.parents[1])
    composition = "conf/retrieval/setting1.yaml+model.attention={name: dpfp, nu: 1}"
    assert capacity_script.experiment_name(composition) == "setting1_dpfp1"
    assert capacity_script.experiment_name("conf/retrieval/setting1_linear.yaml") == "setting1_linear"
    ours = Result("DPFP ν=1, sum rule", composition, 120, 1, "", 0.009, 0.009, 1.0, 500, "patience", 1.0)
    official = capacity_script.loss_text(capacity_script.OFFICIAL_FINAL_LOSS["setting1_dpfp1"][120])
    assert (
        f"| setting1_dpfp1 | 120 | 0.0090 ± 0.0000 (1) | patience (500) | {official} |"
        in capacity_script.table([ours])
    )


def test_a_system_beyond_the_paper_gets_its_experiment_name_and_no_official_values(monkeypatch):
    """The DeltaNet family's sweeps (conf/README.md rows setting{1,2}_{deltanet,gated_deltanet,gla}) are
    named by their experiment; the official columns stay empty (the paper did not run them)."""
    monkeypatch.chdir(SCRIPT.parents[1])
    composition = "conf/retrieval/setting2.yaml+model.attention=gated_deltanet"
    assert capacity_script.experiment_name(composition) == "setting2_gated_deltanet"
    ours = [
        Result("Gated DeltaNet", composition, s, 1, "", loss, loss, 1.0, 900, "patience", 1.0)
        for s, loss in ((40, 0.0005), (80, 0.03))
    ]
    text = capacity_script.table(ours)
    assert "| setting2_gated_deltanet | 80 | 0.0300 ± 0.0000 (1) | patience (900) | — |" in text
    assert "| setting2_gated_deltanet | 40, 80 | 80 | — | — | — |" in text
