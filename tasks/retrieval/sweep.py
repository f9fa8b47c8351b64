"""Capacity sweep of the retrieval task: a grid of attention systems × S values × seeds (the paper's
Figures 2 and 3).

Each system is a config composition ``BASE.yaml[+OVERLAY.yaml][+key=value]...``: the YAML files are
given to ``fit`` as successive ``--config`` options and each ``key=value`` as the option ``--key=value``,
in that order (a later part wins), e.g. ``conf/retrieval/setting1.yaml+model.attention=linear`` or
``conf/retrieval/setting2.yaml+conf/retrieval/fwm.yaml``. A part cannot contain ``+``.

Every (composition, S, seed) triple is one ``fit`` of the project CLI (``--seed_everything`` and the data
seed set to the seed; seeds are 1..N, the official code used 1), run in worker processes. Files under
``--output``:

- ``results.csv``: one row per run, appended (and flushed) as soon as the run ends: the system, the
  config, S, the seed, the extra overrides, the final and best evaluation loss, the final accuracy, the
  steps, why the run stopped (``threshold``: eval loss below 0.001; ``patience``: no improvement for the
  patience; ``max_steps``; ``end_of_data``: the training stream ran out; ``non_finite``), and the seconds.
  Rerun with the same ``--output``, runs already in the file are skipped, so a crash loses one run.
- ``summary.csv``: per (config, S), the mean and sample standard deviation of the final loss over seeds.
- ``final_eval_loss.png`` / ``.pdf``: final loss vs S (mean ± std), one line per system; and the same
  image in TensorBoard under ``tensorboard/`` (tag ``sweep/final_eval_loss``).
- ``runs/<name>_S<S>_seed<seed>/version_N``: each run's TensorBoard logs and checkpoints, ``<name>``
  the composition's file stems and overrides joined by ``+`` (``run_name``).

Arguments the sweep does not know (``--key value``) are passed to every run's ``fit``:

    python -m tasks.retrieval.sweep --configs conf/retrieval/setting1.yaml+model.attention=linear \\
        "conf/retrieval/setting1.yaml+model.attention={name: dpfp, nu: 1}" --num_keys 20 40 80 \\
        --seeds 3 --output runs/sweep --trainer.max_steps 20000
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fwp.attention import AttentionCore

RESULTS_FILE, SUMMARY_FILE, PLOT_STEM = "results.csv", "summary.csv", "final_eval_loss"
STOP_REASONS = ("threshold", "patience", "max_steps", "end_of_data", "non_finite")
OVERRIDE = re.compile(r"(?P<key>[A-Za-z_][\w.]*)=(?P<value>.*)", re.DOTALL)


def composition_parts(composition: str) -> list[tuple[str, str]]:
    """The parts of ``BASE.yaml[+OVERLAY.yaml][+key=value]...`` in order, each ``("config", path)``
    (normalised) or ``("override", "key=value")``; the first part must be a file. A missing file is a
    ``FileNotFoundError`` naming it."""
    parts = []
    for index, part in enumerate(composition.split("+")):
        if index > 0 and OVERRIDE.fullmatch(part):
            parts.append(("override", part))
        elif Path(part).is_file():
            parts.append(("config", os.path.normpath(part)))
        else:
            raise FileNotFoundError(f"sweep: config file not found: {part} (in --configs {composition})")
    return parts


def composition_arguments(composition: str) -> list[str]:
    """The ``fit`` options of a composition: ``--config FILE`` per file, ``--key=value`` per override."""
    arguments = []
    for kind, part in composition_parts(composition):
        arguments += ["--config", part] if kind == "config" else [f"--{part}"]
    return arguments


def normalized_composition(composition: str) -> str:
    """The composition with normalised file paths: the ``config`` column of ``results.csv``."""
    return "+".join(part for _, part in composition_parts(composition))


def run_name(composition: str) -> str:
    """A file-name-safe name of a composition: file stems and overrides (last key component, value with
    punctuation runs as ``_``) joined by ``+``, e.g. ``setting1+attention=name_dpfp_nu_1``."""
    names = []
    for kind, part in composition_parts(composition):
        if kind == "config":
            names.append(Path(part).stem)
        else:
            key, value = OVERRIDE.fullmatch(part).group("key", "value")
            names.append(f"{key.rsplit('.', 1)[-1]}={re.sub(r'[^A-Za-z0-9.-]+', '_', value).strip('_')}")
    return "+".join(names)


@dataclass(frozen=True)
class Job:
    """One training run of the grid."""

    config: str
    num_keys: int
    seed: int
    overrides: tuple[str, ...]
    output: str
    threads: int

    @property
    def key(self) -> tuple[str, int, int, str]:
        """What identifies a run in ``results.csv``."""
        return (self.config, self.num_keys, self.seed, " ".join(self.overrides))


@dataclass(frozen=True)
class Result:
    """The outcome of one run: the last evaluation (as plotted), the best one, why it stopped, the cost."""

    system: str
    config: str
    num_keys: int
    seed: int
    overrides: str
    final_eval_loss: float
    best_eval_loss: float
    final_eval_accuracy: float
    steps: int
    stop_reason: str
    seconds: float

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.config, self.num_keys, self.seed, self.overrides)

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Result:
        types = {f.name: f.type for f in fields(cls)}
        convert = {"int": int, "float": float, "str": str}
        return cls(**{name: convert[types[name]](row[name]) for name in types})


CSV_FIELDS = tuple(f.name for f in fields(Result))


def system_label(core: AttentionCore) -> str:
    """The attention system of a retrieval model's attention core in words, e.g. ``DPFP ν=2, delta rule``
    or, for Gated DeltaNet, ``l2 + conv 4, gated delta rule, output gate``."""
    if not core.is_fast_weight:
        return "Softmax"
    feature_map = getattr(core, "feature_map", "?")
    features = {
        "elu": "Linear (elu+1)",
        "dpfp": f"DPFP ν={getattr(core, 'nu', '?')}",
        "favor": f"FAVOR+ m={getattr(core, 'm', '?')}",
        "tanh": "tanh",
    }.get(feature_map, feature_map)
    if core.short_conv:
        features += f" + conv {core.short_conv}"
    rule = {"fwm": "FWM rule"}.get(core.rule, f"{'gated ' if core.decay else ''}{core.rule} rule")
    parts = [features, rule] + ["β ∈ (0, 2)"] * (core.beta_scale != 1.0) + ["output gate"] * core.output_gate
    return ", ".join(parts)


def stop_reason(trainer) -> str:
    """Why ``fit`` ended, one of ``STOP_REASONS``."""
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    reasons = {
        EarlyStoppingReason.STOPPING_THRESHOLD: "threshold",
        EarlyStoppingReason.PATIENCE_EXHAUSTED: "patience",
        EarlyStoppingReason.NON_FINITE_METRIC: "non_finite",
    }
    callback = trainer.early_stopping_callback
    if callback is not None and callback.stopping_reason in reasons:
        return reasons[callback.stopping_reason]
    return "max_steps" if 0 <= trainer.max_steps <= trainer.global_step else "end_of_data"


def run_job(job: Job) -> Result:
    """Train one (config, S, seed) in this process through the project CLI, then evaluate the final
    model on fresh sequences (the paper's "final evaluation loss")."""
    import torch

    from fwp.training.cli import main

    torch.set_num_threads(job.threads)
    name = f"{run_name(job.config)}_S{job.num_keys}_seed{job.seed}"
    args = [
        "fit",
        *composition_arguments(job.config),
        "--data.init_args.num_keys", str(job.num_keys),
        "--data.init_args.seed", str(job.seed),
        "--seed_everything", str(job.seed),
        "--trainer.logger.init_args.save_dir", str(Path(job.output) / "runs"),
        "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *job.overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    cli = main(args)
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    final = trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return Result(
        system=system_label(cli.model.attention),
        config=job.config,
        num_keys=job.num_keys,
        seed=job.seed,
        overrides=" ".join(job.overrides),
        final_eval_loss=final["valid/loss"],
        best_eval_loss=float(best) if best is not None else final["valid/loss"],
        final_eval_accuracy=final["valid/accuracy"],
        steps=trainer.global_step,
        stop_reason=stop_reason(trainer),
        seconds=time.perf_counter() - start,
    )


def read_results(path: Path) -> list[Result]:
    """The rows of an existing ``results.csv`` (none if absent); a file with other columns is an error."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_FIELDS:
            raise ValueError(
                f"sweep: {path} has columns {reader.fieldnames}, expected {list(CSV_FIELDS)}; "
                "give another --output"
            )
        return [Result.from_row(row) for row in reader]


def append_result(result: Result, path: Path) -> None:
    """Append one row (with the header if the file is new) and push it to disk."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(asdict(result))
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class Point:
    """The final loss of one (config, S) over its seeds."""

    system: str
    config: str
    num_keys: int
    runs: int
    mean_final_eval_loss: float
    std_final_eval_loss: float


def summarize(results: Iterable[Result]) -> list[Point]:
    """Mean and sample standard deviation (0 for one seed) of the final loss per (config, S)."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for result in results:
        groups.setdefault((result.config, result.num_keys), []).append(result)
    points = []
    for (config, num_keys), group in sorted(groups.items()):
        losses = [r.final_eval_loss for r in group]
        std = statistics.stdev(losses) if len(losses) > 1 else 0.0
        points.append(Point(group[0].system, config, num_keys, len(losses), statistics.fmean(losses), std))
    return points


def write_summary(points: Sequence[Point], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Point)])
        writer.writeheader()
        for point in points:
            writer.writerow(asdict(point))


def plot_points(points: Sequence[Point], stem: Path):
    """Final evaluation loss vs S (mean ± std over seeds), one line per system, x ticks at the S values;
    written to ``stem.png`` and ``stem.pdf``; returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for config in sorted({p.config for p in points}):
        line = sorted((p for p in points if p.config == config), key=lambda p: p.num_keys)
        axes.errorbar(
            [p.num_keys for p in line],
            [p.mean_final_eval_loss for p in line],
            yerr=[p.std_final_eval_loss for p in line],
            marker="o",
            capsize=3,
            label=line[0].system,
        )
    ticks = sorted({p.num_keys for p in points})
    axes.set_xticks(ticks, [str(s) for s in ticks], rotation=45 if len(ticks) > 10 else 0)
    axes.set_xlabel("number of unique keys S")
    axes.set_ylabel("final evaluation loss")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    for suffix in (".png", ".pdf"):
        figure.savefig(stem.with_suffix(suffix), dpi=120)
    return figure


def log_figure(figure, directory: Path) -> None:
    """Log the plot as an image to TensorBoard (tag ``sweep/final_eval_loss``)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory)) as writer:
        writer.add_figure("sweep/final_eval_loss", figure)


def threads_per_worker(workers: int) -> int:
    """Torch threads of each run: ``OMP_NUM_THREADS`` if set (on a shared CPU, several threads per run
    made a step 20× slower), else the cores divided among the workers."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // workers)


def run_sweep(
    configs: Sequence[str],
    num_keys: Sequence[int],
    output: Path,
    *,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    workers: int = 1,
) -> list[Result]:
    """Run the grid's missing runs with ``workers`` processes, appending each result to
    ``results.csv`` as it ends; then write the summary, the plots and the TensorBoard image.
    Returns every result of the grid (earlier ones included)."""
    configs = [normalized_composition(config) for config in configs]
    if any(s < 1 for s in num_keys):
        raise ValueError(f"sweep: every --num_keys must be >= 1, got {list(num_keys)}")
    if seeds < 1 or workers < 1:
        raise ValueError(f"sweep: --seeds and --workers must be >= 1, got {seeds} and {workers}")
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / RESULTS_FILE
    done = {r.key: r for r in read_results(results_path)}
    threads = threads_per_worker(workers)
    grid = [
        Job(c, s, seed, tuple(overrides), str(output), threads)
        for c in configs
        for s in num_keys
        for seed in range(1, seeds + 1)
    ]
    todo = [job for job in grid if job.key not in done]
    if workers == 1:
        finished = map(run_job, todo)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        finished = pool.imap_unordered(run_job, todo, chunksize=1)
    for result in finished:
        append_result(result, results_path)
        done[result.key] = result
    if workers > 1:
        pool.close()
        pool.join()
    results = [done[job.key] for job in grid]
    points = summarize(results)
    write_summary(points, output / SUMMARY_FILE)
    log_figure(plot_points(points, output / PLOT_STEM), output / "tensorboard")
    return results


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own options, and the ``--key value`` overrides for every run."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        required=True,
        help="config compositions BASE.yaml[+OVERLAY.yaml][+key=value]... (one line each)",
    )
    parser.add_argument("--num_keys", nargs="+", type=int, required=True, help="values of S")
    parser.add_argument("--seeds", type=int, default=1, help="runs per point, seeds 1..N")
    parser.add_argument("--output", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args, overrides = parser.parse_known_args(argv)
    if overrides and not overrides[0].startswith("--"):
        parser.error(f"unexpected argument {overrides[0]!r}: overrides are --key value pairs")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sweep; a bad config path, size or output file ends in one ``fwp: error:`` line."""
    from fwp.training.user_errors import exit_with_user_error

    args, overrides = parse_args(argv)
    try:
        results = run_sweep(
            args.configs,
            args.num_keys,
            args.output,
            seeds=args.seeds,
            overrides=overrides,
            workers=args.workers,
        )
    except (FileNotFoundError, ValueError) as error:
        exit_with_user_error(error)
    for point in summarize(results):
        print(
            f"{point.system:32s} S={point.num_keys:<5d} final eval loss "
            f"{point.mean_final_eval_loss:.5f} ± {point.std_final_eval_loss:.5f} ({point.runs} runs)"
        )
    files = (args.output / RESULTS_FILE, args.output / SUMMARY_FILE, args.output / PLOT_STEM)
    print("sweep: {}, {}, {}.png/.pdf".format(*files))


if __name__ == "__main__":
    main()
