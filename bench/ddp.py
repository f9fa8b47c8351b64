"""DDP on this machine's CPU, and a per-GPU memory model of the WikiText-103 language models.

1. Throughput (``--throughput``): the tiny synthetic-corpus delta-rule LM (``conf/lm/synthetic.yaml``,
   2 layers, d_model 64) trained through the project CLI in fresh processes, tokens/s measured between
   the ends of training steps ``warmup`` and ``steps`` (process start-up, data preparation and the
   first steps excluded):
   - 1 process, 1 thread, batch B;  1 process, 2 threads, batch B;
   - DDP, 2 processes x 1 thread (gloo), batch B per rank (global 2B);
   - 1 process, 2 threads, batch 2B (the DDP run's global batch).
   Runs alternate over ``--rounds`` rounds and medians are reported, so that load from other jobs on a
   shared machine hits every configuration alike.

2. Memory model (``--memory``), per GPU, of ``conf/lm/wt103_{small,medium}_<attention>.yaml`` at the
   paper's global batch (small: 96 x 256 tokens, medium: 56 x 384) over G GPUs:
   - parameters P (counted by building the model with WikiText-103's 267,738 ids), float32:
     weights 4P, gradients 4P, Adam moments 8P, DDP gradient buckets 4P bytes (FSDP: all / G);
   - activations: the bytes of every tensor autograd saves for the backward pass (distinct storages,
     parameters excluded), measured with ``saved_tensors_hooks`` on one training sequence on the CPU,
     times the per-GPU batch; in float32 and with the backbone under bf16 autocast (the adaptive
     softmax kept in float32: under autocast it fails today, see the notes). This includes the chunkwise
     fast-weight backend's chunk-start states (its only state memory in training) and the adaptive
     softmax's saved logits; transient buffers of the backward pass come on top;
   - carried fast-weight states (runs with ``carry_state``): per layer ``B x H x d_dot x d_v`` floats.

``python bench/ddp.py`` runs both (about 5 minutes on 2 cores); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 267_738
GLOBAL_BATCHES = {"small": (96, 256), "medium": (56, 384)}


class StepTimer(L.Callback):
    """Writes ``{"seconds": t, "steps": n, "tokens_per_step": k}`` (rank 0) for the steps after
    ``warmup``: ``t`` from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, output: str) -> None:
        self.warmup, self.output = warmup, output
        self.start: float | None = None
        self.tokens_per_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.tokens_per_step = batch["target"].numel() * trainer.world_size

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.start is not None:
            record = {
                "seconds": time.perf_counter() - self.start,
                "steps": trainer.global_step - self.warmup,
                "tokens_per_step": self.tokens_per_step,
            }
            Path(self.output).write_text(json.dumps(record))


def throughput_configurations(batch: int) -> dict[str, dict]:
    return {
        f"1 process x 1 thread, batch {batch}": {"devices": 1, "threads": 1, "batch": batch},
        f"1 process x 2 threads, batch {batch}": {"devices": 1, "threads": 2, "batch": batch},
        f"DDP 2 processes x 1 thread, batch {batch}/rank": {"devices": 2, "threads": 1, "batch": batch},
        f"1 process x 2 threads, batch {2 * batch}": {"devices": 1, "threads": 2, "batch": 2 * batch},
    }


def run_once(configuration: dict, corpus: Path, directory: Path, steps: int, warmup: int) -> float:
    """Tokens/s of one training run of ``configuration`` in fresh processes."""
    output = directory / "timing.json"
    output.unlink(missing_ok=True)
    trainer = {
        "accelerator": "cpu",
        "devices": configuration["devices"],
        "strategy": "ddp" if configuration["devices"] > 1 else "auto",
        "max_steps": steps,
        "limit_val_batches": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [
            {"class_path": "bench.ddp.StepTimer", "init_args": {"warmup": warmup, "output": str(output)}}
        ],
    }
    trainer_file = directory / "trainer.yaml"
    trainer_file.write_text(yaml.safe_dump(trainer))
    command = [
        sys.executable,
        str(REPO / "cli.py"),
        "fit",
        "--config",
        str(REPO / "conf" / "lm" / "synthetic.yaml"),
        "--trainer",
        str(trainer_file),
        "--data.init_args.data_dir",
        str(corpus),
        "--data.init_args.batch_size",
        str(configuration["batch"]),
    ]
    threads = str(configuration["threads"])
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    result = subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"run {configuration} failed:\n{result.stderr[-3000:]}")
    record = json.loads(output.read_text())
    return record["steps"] * record["tokens_per_step"] / record["seconds"]


def measure_throughput(batch: int, steps: int, warmup: int, rounds: int) -> dict[str, float]:
    from tasks.language_modeling.synthetic import write_synthetic_corpus

    configurations = throughput_configurations(batch)
    samples: dict[str, list[float]] = {name: [] for name in configurations}
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        corpus = write_synthetic_corpus(directory / "corpus")
        for _ in range(rounds):
            for name, configuration in configurations.items():
                samples[name].append(run_once(configuration, corpus, directory, steps, warmup))
    return {name: statistics.median(values) for name, values in samples.items()}


def language_model(size: str, attention: str):
    """The LanguageModel of ``conf/lm/wt103_<size>_<attention>.yaml`` over WikiText-103's vocabulary."""
    from tasks.language_modeling.module import LanguageModel

    config = yaml.safe_load((REPO / "conf" / "lm" / f"wt103_{size}_{attention}.yaml").read_text())
    return LanguageModel(VOCAB_SIZE, **config["model"]["init_args"])


def saved_activation_bytes(model, length: int, autocast: bool) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training forward pass of one
    sequence of ``length`` tokens drawn from a Zipf law (``p(id r) ∝ 1/(r+1)``, roughly WikiText-103's
    word frequencies: what the adaptive softmax's tail clusters save depends on it; parameters
    excluded). With ``autocast`` the backbone runs under bf16 autocast and the adaptive softmax in
    float32 (it fails under autocast, see the notes)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    zipf = 1.0 / torch.arange(1, VOCAB_SIZE + 1, dtype=torch.float64)
    tokens = torch.multinomial(
        zipf, length + 1, replacement=True, generator=torch.Generator().manual_seed(0)
    )[None]
    backbone = model.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output, _ = backbone(tokens[:, :-1])
        loss = -backbone.target_log_probs(output.float(), tokens[:, 1:]).mean()
    del loss
    return sum(storages.values())


def carried_state_bytes(model, batch: int) -> int:
    """Bytes of the fast-weight states carried between segments: ``B x H x d_dot x d_v`` per layer
    (``+ B x H x d_dot`` with the denominator), float32, measured from one step of the model."""
    tokens = torch.zeros(batch, 1, dtype=torch.long)
    with torch.no_grad():
        _, states = model(tokens)
    return sum(t.numel() * 4 for state in states for t in flatten_tensors(state))


def flatten_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flatten_tensors(item)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in flatten_tensors(getattr(value, name))]
    return []


def memory_table(attentions: list[str], gpu_counts: list[int]) -> list[str]:
    """Markdown rows: per-GPU training memory of every (size, attention, number of GPUs)."""
    lines = [
        "| config | P | weights+grads+Adam (+DDP buckets) | activations/sequence fp32 / bf16 | GPUs | "
        "batch/GPU | DDP per GPU fp32 / bf16 | FSDP per GPU fp32 | carried states/GPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, (global_batch, length) in GLOBAL_BATCHES.items():
        for attention in attentions:
            torch.manual_seed(0)
            model = language_model(size, attention)
            count = sum(p.numel() for p in model.parameters())
            static, buckets = 16 * count, 4 * count
            full = saved_activation_bytes(model, length, autocast=False)
            mixed = saved_activation_bytes(model, length, autocast=True)
            for gpus in gpu_counts:
                batch = global_batch // gpus
                carried = carried_state_bytes(model.model, batch) if model.model.bounded_state else 0
                ddp = [gib(static + buckets + batch * activations) for activations in (full, mixed)]
                lines.append(
                    f"| {size} {attention} | {count / 1e6:.1f}M | {gib(static):.2f} (+{gib(buckets):.2f}) "
                    f"GiB | {mib(full)} / {mib(mixed)} MiB | {gpus} | {batch} | "
                    f"{ddp[0]:.1f} / {ddp[1]:.1f} GiB | "
                    f"{gib(static / gpus + batch * full):.1f} GiB | {mib(carried)} MiB |"
                )
    return lines


def gib(size: float) -> float:
    return size / 2**30


def mib(size: float) -> str:
    return f"{size / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", action="store_true", help="only the DDP throughput part")
    parser.add_argument("--memory", action="store_true", help="only the memory model")
    parser.add_argument("--batch", type=int, default=16, help="sequences of 64 tokens per process")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attentions", nargs="+", default=["delta", "softmax"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, one round")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 8, 3, 1
    both = not (args.throughput or args.memory)
    print(
        f"# bench/ddp.py on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    if args.throughput or both:
        results = measure_throughput(args.batch, args.steps, args.warmup, args.rounds)
        baseline = next(iter(results.values()))
        print(f"\n## Training throughput, synthetic delta LM, median of {args.rounds} rounds\n")
        print("| configuration | tokens/s | vs 1 process x 1 thread |\n|---|---|---|")
        for name, value in results.items():
            print(f"| {name} | {value:,.0f} | {value / baseline:.2f}x |")
    if args.memory or both:
        print("\n## Memory model per GPU (training, Adam), WikiText-103 configs\n")
        print("\n".join(memory_table(args.attentions, args.gpus)))


if __name__ == "__main__":
    main()
