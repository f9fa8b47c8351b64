"""Retrieval capacity: this framework's final losses next to the official run logs.

Reads the ``results.csv`` of one or more capacity sweeps (``python -m tasks.retrieval.sweep``) and
prints a markdown table per (config, S): our final evaluation loss (mean ± std over seeds, how the runs
stopped, their steps) and the final loss of the official run (the last row of the official
``synthetic/logs/d64_<system>_AssocSeq<L>N<S>R<r>.csv`` of ischlag/fast-weight-transformers, one seed),
then each system's capacity (the first S whose final loss exceeds 0.01) in both, the official one on
the same grid of S as ours (the ratio compares those) and on every logged S.

    python bench/capacity.py /work/runs_capacity/setting1/results.csv /work/runs_capacity/setting2/results.csv

Commands that produced the sweeps (one process at a time, as on the shared CPU of BENCHMARKS.md; the
systems were then single files, ``setting2_dpfp_sum.yaml`` etc., now the compositions below, whose
experiment names in conf/README.md are those stems):

    python -m tasks.retrieval.sweep --configs \\
        "conf/retrieval/setting2.yaml+model.attention={name: dpfp, nu: 1}" \\
        "conf/retrieval/setting2.yaml+model.attention={name: delta, nu: 1}" \\
        --num_keys 40 80 --output runs_capacity/setting2
    python -m tasks.retrieval.sweep --configs conf/retrieval/setting1.yaml+model.attention=linear \\
        "conf/retrieval/setting1.yaml+model.attention={name: dpfp, nu: 1}" \\
        --num_keys 40 60 80 140 --output runs_capacity/setting1

BENCHMARKS.md (Retrieval capacity) lists the commands of every other point of the comparison. The
DeltaNet family (beyond the paper: no official logs, so their official columns stay empty; their
experiment names, e.g. ``setting1_deltanet``, come from the same conf/README.md rows) was swept one
point per command, e.g.

    python -m tasks.retrieval.sweep --configs conf/retrieval/setting1.yaml+model.attention=deltanet \\
        --num_keys 20 --output runs_capacity/presets/setting1

(docs/retrieval.md, "Beyond the paper", lists every point run).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections import defaultdict
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.retrieval.sweep import Result, normalized_composition, read_results, summarize

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT_ROW = re.compile(
    r"^\|\s*`(?P<name>\w+)`\s*\|.*\|\s*`python cli\.py fit (?P<arguments>[^`]+)`\s*\|\s*$"
)

CAPACITY_THRESHOLD = 0.01

OFFICIAL_FINAL_LOSS: dict[str, dict[int, float]] = {
    # config stem: {S: last eval loss of the official log d64_<system>_AssocSeq<L>N<S>R<r>.csv}
    # (Setting 1: R0, L = S; Setting 2: R1, L = 2S); <system> per config in the comment.
    # Setting 1, Figure 2
    "setting1_linear": {20: 0.0008887422, 40: 0.00082911656, 60: 0.024646008, 80: 0.110073715},  # linear_sum
    "setting1_dpfp1": {  # dpfp1_sum
        20: 0.0007829439,
        40: 0.00027436396,
        60: 0.0004292571,
        80: 0.00016707585,
        100: 0.00020874513,
        120: 0.0086243795,
        140: 0.053215686,
    },
    "setting1_dpfp2": {  # dpfp2_sum
        200: 0.0003661853,
        220: 0.0007329383,
        240: 0.0005127346,
        260: 0.009684941,
        280: 0.045646228,
    },
    "setting1_dpfp3": {360: 0.0044559217, 380: 0.0087734815, 400: 0.036083616, 420: 0.052599918},  # dpfp3_sum
    "setting1_favor64": {20: 0.13004512, 40: 0.29820055, 60: 0.49263066},  # favor64_sum
    "setting1_favor128": {20: 0.079693, 40: 0.21017079, 60: 0.4849124},  # favor128_sum
    "setting1_favor512": {20: 0.04527239, 40: 0.07616036, 60: 0.40904903},  # favor512_sum
    "setting1_softmax": {  # softmax_cat
        20: 0.0006343253,
        60: 7.218058e-05,
        100: 2.0059513e-05,
        200: 8.600196e-06,
        300: 5.463643e-06,
        400: 2.8018367e-06,
        420: 3.110368e-06,
        440: 2.141223e-06,
        460: 0.008928572,
        480: 4.5171923e-06,
        500: 0.17410815,
        520: 0.008929353,
        560: 0.03571496,
        600: 0.053571522,
    },
    # Setting 2, Figure 3
    "setting2_dpfp_sum": {
        20: 0.10479573,
        40: 0.113640115,
        60: 0.12291964,
        80: 0.11903926,
        100: 0.11650743,
    },  # dpfp1_sum
    "setting2_dpfp_delta": {  # dpfp1_ours: 80 just above the threshold, 100 solved, 120 above it
        20: 0.0007664201,
        40: 0.0009702948,
        60: 0.0060898424,
        80: 0.010567849,
        100: 8.620099e-05,
        120: 0.01825895,
        140: 0.049288824,
    },
    "setting2_dpfp2_delta": {  # dpfp2_ours (S = 100: the complete one of two stored versions)
        40: 0.0005252526,
        60: 0.00048706,
        80: 0.0008051388,
        100: 0.004902393,
        140: 0.0002944933,
        200: 0.0008364869,
    },
    "setting2_linear_delta": {  # linear_ours
        20: 0.0007962155,
        40: 0.00068452896,
        60: 0.00051117066,
        80: 0.101406135,
        100: 0.16147786,
    },
    "setting2_favor_delta": {
        20: 0.10937546,
        40: float("nan"),
    },  # favor64_ours: NaN from step 1900 on at S = 40
    "setting2_favor128_delta": {
        20: 0.11047389,
        40: float("nan"),
    },  # favor128_ours: NaN from step 1900 on at S = 40
    "setting2_dpfp_fwm": {20: 0.05053059, 40: 0.49858028},  # dpfp1_fwm
    "setting2_fwm": {20: 1.691824},  # tanh_fwm (15,400 steps at batch 128)
}


def capacity(losses: dict[int, float]) -> int | None:
    """The first S whose final loss exceeds the threshold (None if none of the given S does); a
    non-finite loss (a run that diverged, as the official FAVOR+ delta runs at S = 40) counts as
    exceeding it."""
    return next((s for s in sorted(losses) if not losses[s] <= CAPACITY_THRESHOLD), None)


def loss_text(loss: float) -> str:
    """A loss with four decimals, or in scientific notation below 1e-4 (a solved softmax run ends
    near 1e-6, which four decimals would show as 0)."""
    return f"{loss:.1e}" if 0 < abs(loss) < 1e-4 else f"{loss:.4f}"


def capacity_text(losses: dict[int, float]) -> str:
    """The capacity as the table shows it: the S, ``> S_max`` when no S run exceeds the threshold,
    ``—`` without any S."""
    if not losses:
        return "—"
    found = capacity(losses)
    return str(found) if found else f"> {max(losses)}"


@cache
def experiment_names() -> dict[str, str]:
    """``{sweep composition: experiment name}`` of the retrieval rows of conf/README.md, e.g.
    ``conf/retrieval/setting1.yaml+model.attention=linear`` → ``setting1_linear`` (the names are the
    stems of the single-file configs the older sweeps wrote, which the official values are keyed by)."""
    names = {}
    for line in (REPO / "conf" / "README.md").read_text(encoding="utf-8").splitlines():
        row = EXPERIMENT_ROW.match(line)
        if row is None or "conf/retrieval/" not in row["arguments"]:
            continue
        arguments, parts = shlex.split(row["arguments"]), []
        for option, value in zip(arguments[::2], arguments[1::2], strict=True):
            parts.append(value if option == "--config" else f"{option.removeprefix('--')}={value}")
        names[normalized_composition("+".join(parts))] = row["name"]
    return names


def experiment_name(config: str) -> str:
    """The experiment a ``results.csv`` config is: its conf/README.md name, or the stem of a single file
    (the configs of sweeps run before conf/ was composed, which no longer exist)."""
    try:
        return experiment_names().get(normalized_composition(config), Path(config).stem)
    except FileNotFoundError:
        return Path(config).stem


def table(results: list[Result]) -> str:
    """The markdown comparison table (one row per config and S) and the capacities."""
    stops: dict[tuple[str, int], list[str]] = defaultdict(list)
    for result in results:
        stops[(result.config, result.num_keys)].append(f"{result.stop_reason} ({result.steps})")
    lines = [
        "| system | config | S | ours: final loss (mean ± std, seeds) | stop (steps) | official log |",
        "|---|---|---|---|---|---|",
    ]
    ours_by_config: dict[str, dict[int, float]] = defaultdict(dict)
    for point in sorted(summarize(results), key=lambda p: (experiment_name(p.config), p.num_keys)):
        config, s = experiment_name(point.config), point.num_keys
        ours_by_config[config][s] = point.mean_final_eval_loss
        official = OFFICIAL_FINAL_LOSS.get(config, {}).get(s)
        official_text = loss_text(official) if official is not None else "—"
        lines.append(
            f"| {point.system} | {config} | {s} | {loss_text(point.mean_final_eval_loss)} ± "
            f"{loss_text(point.std_final_eval_loss)} ({point.runs}) | {', '.join(stops[(point.config, s)])} "
            f"| {official_text} |"
        )
    lines += [
        "",
        "| config | S run | capacity: ours | official, same S | official, all logged S | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for config, ours in sorted(ours_by_config.items()):
        official = OFFICIAL_FINAL_LOSS.get(config, {})
        same_grid = {s: loss for s, loss in official.items() if s in ours}
        mine, theirs = capacity(ours), capacity(same_grid)
        ratio = f"{mine / theirs:.2f}" if mine and theirs else "—"
        lines.append(
            f"| {config} | {', '.join(map(str, sorted(ours)))} | {capacity_text(ours)} "
            f"| {capacity_text(same_grid)} | {capacity_text(official)} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="results.csv files of capacity sweeps")
    args = parser.parse_args(argv)
    print(table([r for path in args.results for r in read_results(path)]))


if __name__ == "__main__":
    main()
