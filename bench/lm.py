"""Benchmark of the WikiText-103 *small* language model on this CPU: training throughput and generation
latency, softmax vs fast-weight attention, eager vs ``torch.compile``, measured side by side in one run;
and greedy decoding of the synthetic translation test set, softmax vs delta.

Model: the paper's small setting (``conf/lm/wt103_small.yaml``): 16 layers, d_model 128, 8 heads of
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
3. Greedy decoding of one batch of the synthetic translation corpus's test split (the batch with the
   most sentences, as ``conf/mt/synthetic.yaml`` packs it), with the models of ``conf/mt/synthetic.yaml``
   without and with ``conf/mt/softmax.yaml`` (untrained weights: every sentence is decoded to its
   length limit ``⌊1.2 S + 10⌋ + 1`` steps, so both models do the same number of steps; a trained
   model stops earlier, at its EOS).

Modes (``--modes``): ``eager``, and ``compiled``: the same model (same seed, same weights) with each
Transformer block compiled by ``torch.compile(fullgraph=True)`` (inductor; training with static shapes,
one graph per T; generation with the default automatic dynamic shapes). Compiling block by block
("regional" compilation) lets the 16 identical blocks share one compiled graph: the whole stack as one
graph (``--compile-scope stack``) took about 400 s per graph to compile on this shared CPU. The adaptive
input and softmax stay eager, as with the task option ``compile: true`` (they compile with
``fullgraph=True`` too, docs/ops.md). A compiled arm's first call(s) compile: that warm-up (wall
seconds) is printed and excluded from the rates.

``--clock cpu`` times this thread's CPU time instead of wall time (one thread): on a machine that
other jobs load, it leaves out the time they hold the core.

Every configuration is warmed up, then the rounds interleave them (one step of each per round) and
medians are reported, so that a load change on a shared machine hits all of them alike. One torch
thread by default: on a CPU shared with other jobs, multi-threaded small ops stall at OpenMP barriers
whenever a thread is descheduled, which made 2-thread figures swing by 10× between runs here.

Run ``python bench/lm.py`` (about an hour on 2 shared cores, most of it compiling) or
``python bench/lm.py --quick`` (smoke run); ``--modes eager`` skips the compiled arms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from fwp.model import DecoderLM, DecoderLMConfig, EncoderDecoder
from fwp.model.beam_search import max_target_lengths, next_token_log_probs
from tasks.translation.data import TranslationDataModule
from tasks.translation.module import TranslationModel

VOCAB_SIZE = 267_738
MODES = ("eager", "compiled")
CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "mt"
MT_ATTENTIONS = ("softmax", "delta")
# the config files composing each arm (conf/README.md), later files' keys winning
MT_COMPOSITIONS = {"softmax": ("synthetic.yaml", "softmax.yaml"), "delta": ("synthetic.yaml",)}
PARTS = ("training", "generation", "translation")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attentions", nargs="+", default=["softmax", "linear", "delta"])
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measurements to run"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--compile-scope",
        choices=("blocks", "stack"),
        default="blocks",
        help="compile each Transformer block (the 16 share one compiled graph) or the whole stack as one",
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[256, 2048], help="training segment lengths"
    )
    parser.add_argument("--tokens-per-step", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 4096], help="generation contexts")
    parser.add_argument("--new-tokens", type=int, default=32, help="timed generation steps per configuration")
    parser.add_argument("--mt-rounds", type=int, default=9, help="timed greedy decodings per MT model")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no OpenMP stalls on a shared CPU)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time (one thread only; for a machine other jobs load)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (2 layers, short lengths)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error(
            f"--clock cpu counts one thread's time and needs --threads 1, got --threads {args.threads}"
        )
    return args


def small_model(
    attention: str, n_layers: int, mode: str = "eager", *, scope: str = "blocks", dynamic: bool | None = None
) -> DecoderLM:
    """The paper's small WikiText-103 model (``n_layers`` = 16) with the given attention preset, the
    same weights for every mode (seed 0); ``compiled``: each Transformer block (``scope`` ``blocks``)
    or the whole stack (``stack``) under ``torch.compile(fullgraph=True, dynamic=dynamic)``."""
    torch.manual_seed(0)
    config = DecoderLMConfig(preset="wt103-small", n_layers=n_layers, attention=attention, init="torch")
    model = DecoderLM(VOCAB_SIZE, config)
    if mode == "compiled":
        for module in model.stack.blocks if scope == "blocks" else [model.stack]:
            module.compile(fullgraph=True, dynamic=dynamic)
    return model


def zipf_tokens(batch: int, length: int, generator: torch.Generator) -> Tensor:
    """Token ids ``[batch, length]`` with ``p(id r) ∝ 1 / (r + 1)``."""
    weights = 1.0 / torch.arange(1, VOCAB_SIZE + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, batch * length, replacement=True, generator=generator)
    return ids.view(batch, length)


@dataclass(frozen=True)
class Timing:
    """Median seconds per call over the timed rounds (on the benchmark's clock), and wall seconds of
    the untimed warm-up calls (for a compiled arm: compiling, partly in compiler subprocesses)."""

    median: float
    warmup: float


def thread_clock(name: str) -> Callable[[], float]:
    """``wall``: ``time.perf_counter``; ``cpu``: ``time.thread_time``, the CPU time of this thread, which
    with one torch thread is the work done for the benchmark and does not count the time other jobs
    hold the core (it still feels their cache and memory traffic)."""
    return {"wall": time.perf_counter, "cpu": time.thread_time}[name]


def interleaved(
    runs: dict[str, Callable[[], object]], rounds: int, warmup: int, clock: Callable[[], float]
) -> dict[str, Timing]:
    """``warmup`` untimed rounds, then ``rounds`` timed rounds; every round calls every run once."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    warmups: dict[str, float] = dict.fromkeys(runs, 0.0)
    for round_index in range(warmup + rounds):
        for name, run in runs.items():
            start, wall = clock(), time.perf_counter()
            run()
            if round_index < warmup:
                warmups[name] += time.perf_counter() - wall
            else:
                times[name].append(clock() - start)
    return {name: Timing(statistics.median(times[name]), warmups[name]) for name in runs}


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


def training_timings(
    attentions: list[str],
    modes: list[str],
    lengths: list[int],
    tokens_per_step: int,
    rounds: int,
    n_layers: int,
    clock: Callable[[], float],
    scope: str,
) -> tuple[dict[str, Timing], dict[int, int]]:
    """Timings of every ``attention/mode/T`` (one model and optimiser per attention and mode, shared by
    the lengths; static shapes when compiled) and the tokens per step of every T."""
    runs, tokens_per_run = {}, {}
    for attention in attentions:
        for mode in modes:
            model = small_model(attention, n_layers, mode, scope=scope, dynamic=False).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
            for length in lengths:
                batch = max(1, tokens_per_step // length)
                tokens = zipf_tokens(batch, length + 1, torch.Generator().manual_seed(length))
                runs[f"{attention}/{mode}/{length}"] = training_step(model, optimizer, tokens)
                tokens_per_run[length] = batch * length
    return interleaved(runs, rounds, 1, clock), tokens_per_run


class Generator:
    """Step-mode generation from a prefilled context; ``step()`` feeds one more token. The prefill runs
    eagerly in every mode (only the steps are timed)."""

    def __init__(self, model: DecoderLM, context: int) -> None:
        self.model = model
        prompt = zipf_tokens(1, context, torch.Generator().manual_seed(context))
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            _, self.states = model(prompt)
        self.token, self.position = prompt[:, -1:], context

    @torch.no_grad()
    def step(self) -> None:
        _, self.states = self.model(self.token, states=self.states, position_offset=self.position)
        self.position += 1


def generation_timings(
    attentions: list[str],
    modes: list[str],
    contexts: list[int],
    rounds: int,
    n_layers: int,
    clock: Callable[[], float],
    scope: str,
) -> dict[str, Timing]:
    """Seconds per generated token of every ``attention/mode/C``. Three warm-up rounds: a compiled step
    compiles for its first position and again, with dynamic sizes, for the next."""
    runs = {}
    for attention in attentions:
        for mode in modes:
            model = small_model(attention, n_layers, mode, scope=scope).eval()
            for context in contexts:
                runs[f"{attention}/{mode}/{context}"] = Generator(model, context).step
    return interleaved(runs, rounds, 3, clock)


@torch.no_grad()
def output_layer_seconds(n_layers: int, repeats: int, clock: Callable[[], float]) -> float:
    """One token's full log-distribution over the vocabulary from the adaptive softmax."""
    model = small_model("linear", n_layers).eval()
    hidden = torch.randn(1, 1, 128)
    return interleaved({"output": lambda: model.log_probs(hidden)}, repeats, 1, clock)["output"].median


def config_options(files: tuple[str, ...], section: str = "model") -> dict:
    """The ``init_args`` of ``section`` composed from the files of ``conf/mt`` (a later file's keys win,
    as with successive ``--config`` options; so do the keys of its ``backbone`` section)."""
    options = {}
    for name in files:
        init_args = yaml.safe_load((CONFIGS / name).read_text()).get(section, {}).get("init_args", {})
        backbone = options.get("backbone", {}) | init_args.get("backbone", {})
        options |= init_args | ({"backbone": backbone} if backbone else {})
    return options


def translation_models(vocab_size: int) -> dict[str, tuple[EncoderDecoder, dict]]:
    """The untrained ``EncoderDecoder`` of the synthetic MT config per attention (seed 1) and its
    options, per attention."""
    models = {}
    for attention in MT_ATTENTIONS:
        options = config_options(MT_COMPOSITIONS[attention])
        torch.manual_seed(1)
        models[attention] = TranslationModel(vocab_size, **options).model.eval(), options
    return models


@torch.no_grad()
def greedy_steps(model: EncoderDecoder, src: Tensor, padding_mask: Tensor, steps: int, bos_id: int) -> Tensor:
    """``steps`` greedy decoding steps of the batch ``src`` ``[B, S]`` (the work of ``greedy_decode``
    when no sentence stops early): encode once, then one argmax token per sentence and step."""
    memory = model.encode(src, padding_mask)
    tokens = torch.full((src.shape[0],), bos_id, dtype=torch.long)
    states = None
    for step in range(steps):
        log_probs, states = next_token_log_probs(model, tokens, states, step, memory, padding_mask)
        tokens = log_probs.argmax(dim=-1)
    return tokens


def translation_decoding(rounds: int, clock: Callable[[], float]) -> None:
    """Greedy decoding of the synthetic test split's largest batch, softmax vs delta, interleaved."""
    data = TranslationDataModule(**config_options(("synthetic.yaml",), "data"))
    batches = data.batches("test")
    batch = max((batches[i] for i in range(len(batches))), key=lambda b: b["src"].shape[0])
    src, mask = batch["src"], batch["src_padding_mask"]
    runs, steps = {}, {}
    for attention, (model, options) in translation_models(data.vocab_size).items():
        limits = max_target_lengths(mask, max_len_a=options["max_len_a"], max_len_b=options["max_len_b"])
        steps[attention] = int(limits.max()) + 1
        runs[attention] = lambda m=model, n=steps[attention]: greedy_steps(m, src, mask, n, data.bos_id)
    seconds = interleaved(runs, rounds, 1, clock)
    print(
        f"\n## MT greedy decoding: synthetic test batch of {src.shape[0]} sentences (source width "
        f"{src.shape[1]}), {steps['delta']} steps, conf/mt/synthetic.yaml, median of {rounds}"
    )
    for attention in MT_ATTENTIONS:
        ratio = seconds[attention].median / seconds["softmax"].median
        print(f"{attention:<10}{seconds[attention].median:>10.3f} s{ratio:>10.2f}x softmax")


def print_table(
    title: str,
    values: dict[str, float],
    timings: dict[str, Timing],
    columns: list[int],
    unit: str,
    args: argparse.Namespace,
) -> None:
    """One row per attention and mode: ``values[f"{attention}/{mode}/{column}"]`` per column, the ratio
    to softmax in the same mode, the ratio compiled / eager and the warm-up seconds of the row."""
    print(f"\n## {title}")
    header = "".join(f"{f'{unit}={c}':>12}" for c in columns)
    ratios = f"{'vs softmax (same mode)':>26}{'vs eager':>18}"
    print(f"{'attention':<10}{'mode':<10}{header}{ratios}{'warm-up s':>11}")
    for attention in args.attentions:
        for mode in args.modes:
            row = [values[f"{attention}/{mode}/{c}"] for c in columns]
            softmax = [values.get(f"softmax/{mode}/{c}", v) for c, v in zip(columns, row, strict=True)]
            eager = [values.get(f"{attention}/eager/{c}", v) for c, v in zip(columns, row, strict=True)]
            to_softmax = " ".join(f"{v / s:.2f}x" for v, s in zip(row, softmax, strict=True))
            to_eager = " ".join(f"{v / e:.2f}x" for v, e in zip(row, eager, strict=True))
            warmup = sum(timings[f"{attention}/{mode}/{c}"].warmup for c in columns)
            cells = "".join(f"{v:>12.2f}" for v in row)
            print(f"{attention:<10}{mode:<10}{cells}{to_softmax:>26}{to_eager:>18}{warmup:>11.1f}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    clock = thread_clock(args.clock)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # one code object serves every arm's graphs
    n_layers = 16
    if args.quick:
        n_layers, args.lengths, args.contexts, args.steps, args.new_tokens = 2, [64, 128], [64, 256], 1, 4
        args.tokens_per_step, args.mt_rounds = 128, 1
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; small model, "
        f"{n_layers} layers; "
        f"{load()}",
        flush=True,
    )
    if "training" in args.parts:
        timings, tokens = training_timings(
            args.attentions,
            args.modes,
            args.lengths,
            args.tokens_per_step,
            args.steps,
            n_layers,
            clock,
            args.compile_scope,
        )
        throughput = {name: tokens[int(name.split("/")[-1])] / t.median for name, t in timings.items()}
        per_step = f"{args.tokens_per_step} tokens/step (batch = tokens / T)"
        title = f"training tokens/s: {per_step}, median of {args.steps}"
        print_table(title, throughput, timings, args.lengths, "T", args)
        print(load(), flush=True)
    if "generation" in args.parts:
        timings = generation_timings(
            args.attentions, args.modes, args.contexts, args.new_tokens, n_layers, clock, args.compile_scope
        )
        latency = {name: 1e3 * t.median for name, t in timings.items()}
        title = f"generation ms/token after a prefill of C tokens (median of {args.new_tokens} steps)"
        print_table(title, latency, timings, args.contexts, "C", args)
        output_ms = 1e3 * output_layer_seconds(n_layers, 10, clock)
        print(f"adaptive softmax, log-distribution over {VOCAB_SIZE} ids: {output_ms:.2f} ms/token")
        print(load(), flush=True)
    if "translation" in args.parts:
        translation_decoding(args.mt_rounds, clock)
        print(load(), flush=True)


if __name__ == "__main__":
    main()
