"""Benchmark of the WikiText-103 *small* language model on this CPU: training throughput and generation
latency, softmax vs fast-weight attention, measured side by side in one run.

Model: the paper's small setting (``conf/lm/wt103_small_*.yaml``): 16 layers, d_model 128, 8 heads of
16, d_ff 2048, post-norm, sinusoidal positions, adaptive input + tied adaptive softmax with cutoffs
20k/40k/200k over WikiText-103's vocabulary of 267,738 ids (~44M parameters). Tokens are drawn from a
Zipf law (``p(rank r) ∝ 1/r``), roughly WikiText-103's word frequencies, so the adaptive softmax does
about the work it does on real text.

1. Training tokens/s: forward + backward + gradient clipping + Adam step on ``--tokens-per-step``
   tokens, the batch being ``tokens_per_step / T`` rows (the paper's batch of 96 × 256 does not fit a
   shared CPU's time budget; the same token count per step keeps the lengths comparable).
2. Generation latency per token (``DecoderLM`` in step mode, ``torch.no_grad``): after a parallel
   prefill of ``C`` tokens, one step = one token through the 16 layers with the states of the previous
   step (fast weights: fixed size; softmax: a key/value cache of ``C + i`` entries). The adaptive
   softmax over the 267k vocabulary (the same for every attention and context) is timed on its own.

Every configuration is warmed up, then the rounds interleave them (one step of each per round) and
medians are reported, so that a load change on a shared machine hits all of them alike. One torch
thread by default: on a CPU shared with other jobs, multi-threaded small ops stall at OpenMP barriers
whenever a thread is descheduled, which made 2-thread figures swing by 10× between runs here.

Run ``python bench/lm.py`` (about 10 minutes on 2 cores) or ``python bench/lm.py --quick`` (smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from fwp.model import DecoderLM

VOCAB_SIZE = 267_738
CUTOFFS = [20_000, 40_000, 200_000]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attentions", nargs="+", default=["softmax", "linear", "delta"])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[256, 2048], help="training segment lengths"
    )
    parser.add_argument("--tokens-per-step", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 4096], help="generation contexts")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed generation steps per configuration")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no OpenMP stalls on a shared CPU)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (2 layers, short lengths)")
    return parser.parse_args()


def small_model(attention: str, n_layers: int) -> DecoderLM:
    """The paper's small WikiText-103 model (``n_layers`` = 16) with the given attention preset."""
    return DecoderLM(
        VOCAB_SIZE,
        d_model=128,
        n_layers=n_layers,
        n_heads=8,
        d_head=16,
        d_ff=2048,
        attention=attention,
        dropout=0.1,
        positional="sinusoidal",
        norm="post",
        tie_embeddings=True,
        adaptive_cutoffs=CUTOFFS,
    )


def zipf_tokens(batch: int, length: int, generator: torch.Generator) -> Tensor:
    """Token ids ``[batch, length]`` with ``p(id r) ∝ 1 / (r + 1)``."""
    weights = 1.0 / torch.arange(1, VOCAB_SIZE + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, batch * length, replacement=True, generator=generator)
    return ids.view(batch, length)


def interleaved_medians(runs: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    """Median wall time (s) of each run over ``rounds`` rounds that call every run once, after
    ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def training_step(model: DecoderLM, optimizer: torch.optim.Optimizer, tokens: Tensor) -> Callable[[], None]:
    """One optimiser step on ``tokens`` ``[B, T + 1]`` (inputs and shifted targets)."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        hidden, _ = model(tokens[:, :-1])
        loss = -model.target_log_probs(hidden, tokens[:, 1:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    return step


def training_tokens_per_second(
    attentions: list[str], lengths: list[int], tokens_per_step: int, rounds: int, n_layers: int
) -> dict[tuple[str, int], float]:
    """Tokens/s of every (attention, T); one model and optimiser per attention, shared by the lengths."""
    runs, tokens_per_run = {}, {}
    for attention in attentions:
        torch.manual_seed(0)
        model = small_model(attention, n_layers).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
        for length in lengths:
            batch = max(1, tokens_per_step // length)
            tokens = zipf_tokens(batch, length + 1, torch.Generator().manual_seed(length))
            runs[f"{attention}/{length}"] = training_step(model, optimizer, tokens)
            tokens_per_run[f"{attention}/{length}"] = batch * length
    seconds = interleaved_medians(runs, rounds, warmup=1)
    return {
        (attention, length): tokens_per_run[f"{attention}/{length}"] / seconds[f"{attention}/{length}"]
        for attention in attentions
        for length in lengths
    }


class Generator:
    """Step-mode generation from a prefilled context; ``step()`` feeds one more token."""

    def __init__(self, model: DecoderLM, context: int) -> None:
        self.model = model
        prompt = zipf_tokens(1, context, torch.Generator().manual_seed(context))
        with torch.no_grad():
            _, self.states = model(prompt)
        self.token, self.position = prompt[:, -1:], context

    @torch.no_grad()
    def step(self) -> None:
        _, self.states = self.model(self.token, states=self.states, position_offset=self.position)
        self.position += 1


def generation_seconds_per_token(
    attentions: list[str], contexts: list[int], rounds: int, n_layers: int
) -> dict[tuple[str, int], float]:
    """Median seconds per generated token of every (attention, context)."""
    runs = {}
    for attention in attentions:
        torch.manual_seed(0)
        model = small_model(attention, n_layers).eval()
        for context in contexts:
            runs[(attention, context)] = Generator(model, context).step
    named = {f"{attention}/{context}": run for (attention, context), run in runs.items()}
    seconds = interleaved_medians(named, rounds, warmup=2)
    return {(attention, context): seconds[f"{attention}/{context}"] for attention, context in runs}


@torch.no_grad()
def output_layer_seconds(n_layers: int, repeats: int) -> float:
    """One token's full log-distribution over the vocabulary from the adaptive softmax."""
    model = small_model("linear", n_layers).eval()
    hidden = torch.randn(1, 1, 128)
    return interleaved_medians({"output": lambda: model.log_probs(hidden)}, repeats, warmup=1)["output"]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    n_layers = 16
    if args.quick:
        n_layers, args.lengths, args.contexts, args.steps, args.new_tokens = 2, [64, 128], [64, 256], 1, 4
        args.tokens_per_step = 128
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; small model, {n_layers} layers"
    )
    throughput = training_tokens_per_second(
        args.attentions, args.lengths, args.tokens_per_step, args.steps, n_layers
    )
    print(f"\n## training: {args.tokens_per_step} tokens/step (batch = tokens / T), median of {args.steps}")
    header = "".join(f"{f'T={t} tok/s':>16}" for t in args.lengths)
    print(f"{'attention':<10}{header}{'vs softmax':>24}")
    for attention in args.attentions:
        values = [throughput[attention, t] for t in args.lengths]
        baseline = [throughput.get(("softmax", t), throughput[attention, t]) for t in args.lengths]
        ratios = " ".join(f"{a / s:.2f}x" for a, s in zip(values, baseline, strict=True))
        print(f"{attention:<10}" + "".join(f"{v:>16.0f}" for v in values) + f"{ratios:>24}")
    latency = generation_seconds_per_token(args.attentions, args.contexts, args.new_tokens, n_layers)
    print(f"\n## generation: ms per token after a prefill of C tokens (median of {args.new_tokens} steps)")
    header = "".join(f"{f'C={c} ms':>14}" for c in args.contexts)
    print(f"{'attention':<10}{header}{'growth':>10}")
    for attention in args.attentions:
        values = [1e3 * latency[attention, c] for c in args.contexts]
        print(
            f"{attention:<10}" + "".join(f"{v:>14.2f}" for v in values) + f"{values[-1] / values[0]:>9.2f}x"
        )
    output_ms = 1e3 * output_layer_seconds(n_layers, 10)
    print(f"adaptive softmax, log-distribution over {VOCAB_SIZE} ids: {output_ms:.2f} ms/token")


if __name__ == "__main__":
    main()
