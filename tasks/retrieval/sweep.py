"""Capacity sweep of the retrieval task: a grid of S values × attention configs (the paper's Figures 2, 3).

Every (config, S) pair is one ``fit`` of the project CLI, run in parallel worker processes (up to the
number of cores). Results go to ``<output>/results.csv`` and ``<output>/final_eval_loss.png`` (final
evaluation loss vs S, one line per attention config), and the plot is logged to TensorBoard in
``<output>/tensorboard``.

    python -m tasks.retrieval.sweep --configs conf/retrieval/setting1_linear.yaml \
        conf/retrieval/setting1_dpfp1.yaml --num_keys 20 40 80 --output runs/sweep
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

CSV_FIELDS = (
    "config",
    "num_keys",
    "final_eval_loss",
    "best_eval_loss",
    "final_eval_accuracy",
    "steps",
    "seconds",
)


@dataclass(frozen=True)
class Job:
    """One training run of the grid."""

    config: str
    num_keys: int
    max_steps: int | None
    output: str
    threads: int


@dataclass(frozen=True)
class Result:
    """The outcome of one run: the last evaluation (as plotted), the best one, and the cost."""

    config: str
    num_keys: int
    final_eval_loss: float
    best_eval_loss: float
    final_eval_accuracy: float
    steps: int
    seconds: float


def run_job(job: Job) -> Result:
    """Train one (config, S) pair in this process through the project CLI, then evaluate the final
    model on fresh sequences (the paper's "final evaluation loss")."""
    import torch

    from fwp.cli import main

    torch.set_num_threads(job.threads)
    name = f"{Path(job.config).stem}_S{job.num_keys}"
    args = [
        "fit",
        "--config", job.config,
        "--data.init_args.num_keys", str(job.num_keys),
        "--trainer.logger.init_args.save_dir", job.output,
        "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if job.max_steps is not None:
        args += ["--trainer.max_steps", str(job.max_steps)]
    start = time.perf_counter()
    cli = main(args)
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    final = trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return Result(
        config=job.config,
        num_keys=job.num_keys,
        final_eval_loss=final["eval/loss"],
        best_eval_loss=float(best) if best is not None else final["eval/loss"],
        final_eval_accuracy=final["eval/accuracy"],
        steps=trainer.global_step,
        seconds=time.perf_counter() - start,
    )


def write_csv(results: Sequence[Result], path: Path) -> None:
    """One row per run, in the columns of ``CSV_FIELDS``."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in sorted(results, key=lambda r: (r.config, r.num_keys)):
            writer.writerow(asdict(result))


def plot_results(results: Sequence[Result], path: Path):
    """Final evaluation loss vs S, one line per config; returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for config in sorted({r.config for r in results}):
        points = sorted((r.num_keys, r.final_eval_loss) for r in results if r.config == config)
        axes.plot(*zip(*points, strict=True), marker="o", label=Path(config).stem)
    axes.set_xlabel("number of unique keys S")
    axes.set_ylabel("final evaluation loss")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def log_figure(figure, directory: Path) -> None:
    """Log the plot as an image to TensorBoard (tag ``sweep/final_eval_loss``)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory)) as writer:
        writer.add_figure("sweep/final_eval_loss", figure)


def run_sweep(
    configs: Sequence[str], num_keys: Sequence[int], output: Path, *, max_steps: int | None, workers: int
) -> list[Result]:
    """Run the grid with ``workers`` processes; write the CSV, the PNG and the TensorBoard image."""
    for config in configs:
        if not Path(config).is_file():
            raise FileNotFoundError(f"sweep: config file not found: {config}")
    if any(s < 1 for s in num_keys):
        raise ValueError(f"sweep: every --num_keys must be >= 1, got {list(num_keys)}")
    output.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [Job(c, s, max_steps, str(output), threads) for c in configs for s in num_keys]
    if workers == 1:
        results = [run_job(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(run_job, jobs, chunksize=1)
    write_csv(results, output / "results.csv")
    log_figure(plot_results(results, output / "final_eval_loss.png"), output / "tensorboard")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", required=True, help="retrieval YAML configs (one line each)")
    parser.add_argument("--num_keys", nargs="+", type=int, required=True, help="values of S")
    parser.add_argument("--output", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--max_steps", type=int, default=None, help="override trainer.max_steps")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = run_sweep(
        args.configs, args.num_keys, args.output, max_steps=args.max_steps, workers=args.workers
    )
    for result in sorted(results, key=lambda r: (r.config, r.num_keys)):
        name = Path(result.config).stem
        print(f"{name:28s} S={result.num_keys:<5d} final eval loss {result.final_eval_loss:.5f}")
    print(f"sweep: {args.output / 'results.csv'}, {args.output / 'final_eval_loss.png'}")


if __name__ == "__main__":
    main()
