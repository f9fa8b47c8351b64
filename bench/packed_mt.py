"""Benchmark of packed translation batches (``TranslationDataModule(packed=True)``) against the padded
ones: the padding fraction of the training batches, and training tokens/s of the same pairs both ways,
measured side by side in one run.

Batches are cut as the data module cuts them (``pack_batches``: pairs sorted by (source, target)
length, ``B · max(S, T) <= max_tokens``) from two length distributions:

- ``synthetic``: the pairs of the generated corpus of ``conf/mt/synthetic.yaml`` (its BPE, ``max_tokens
  512``, ``max_positions 64``; written once under ``--cache-dir``);
- ``wmt-like``: source lengths log-normal around 24 BPE tokens (σ = 0.6, at most 250), targets the
  source length times a log-normal factor around 1.1 (σ = 0.15), ``max_tokens 3584`` as
  ``conf/mt/wmt14_base.yaml`` (a stand-in for WMT14 en-de: no corpus is downloaded);
- ``wmt-like-25k``: the same lengths in batches of ``max_tokens 25000`` (more pairs per batch, whose
  targets vary more: more padding).

For each, ``--batches`` batches drawn at random, filled with random token ids, each in its padded form
and its packed twin (the same pairs end to end with offsets). One training step = forward + the
label-smoothed loss + backward of the model of ``conf/mt/synthetic.yaml`` (d_model 64, 2 + 2 layers;
``delta``: its DPFP encoder, delta-rule decoder, softmax cross-attention; ``softmax``: with
``conf/mt/softmax.yaml``). Tokens/s counts real target tokens (padding excluded). Rounds interleave the
variants (one pass over the batches each) and medians decide.

Run ``python bench/packed_mt.py --threads 1 --clock cpu`` (a few minutes); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lm import config_options
from ops import CLOCKS, interleaved, machine, require_one_thread_for_cpu_clock, use_clock

from fwp.data import PAD_ID
from tasks.translation.data import PairBatches, TranslationDataModule, pack_batches
from tasks.translation.module import TranslationModel

ATTENTIONS = {"delta": ("synthetic.yaml",), "softmax": ("synthetic.yaml", "softmax.yaml")}
VOCAB = 1000
DISTRIBUTIONS = ("synthetic", "wmt-like", "wmt-like-25k")


def synthetic_lengths(cache_dir: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Source and target lengths of the synthetic corpus's kept training pairs, its max_tokens and
    max_positions (``conf/mt/synthetic.yaml``)."""
    data = TranslationDataModule(bpe_vocab_size=1000, max_tokens=512, max_positions=64, cache_dir=cache_dir)
    data.prepare_data()
    source, target = data.line_tokens("train")
    kept = (source.lengths > 0) & (target.lengths > 0) & (source.lengths <= 64) & (target.lengths < 64)
    return source.lengths[kept], target.lengths[kept], 512, 64


def wmt_like_lengths(count: int, seed: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Log-normal source lengths around 24 and targets about 1.1 times as long (module docstring), cut
    into batches of ``max_tokens``."""
    rng = np.random.default_rng(seed)
    source = np.clip(np.round(rng.lognormal(np.log(24), 0.6, count)), 1, 250).astype(np.int64)
    target = np.clip(np.round(source * rng.lognormal(np.log(1.1), 0.15, count)), 1, 249).astype(np.int64)
    return source, target, max_tokens, 256


class RandomLines:
    """Token ids of random lines with given lengths (what ``PairBatches`` reads, ``LineTokens``-like)."""

    def __init__(self, lengths: np.ndarray, generator: np.random.Generator) -> None:
        self.lengths = lengths
        self.lines = [generator.integers(4, VOCAB, length) for length in lengths]

    def __getitem__(self, index: int) -> np.ndarray:
        return self.lines[index]


def batch_sets(
    lengths: tuple[np.ndarray, np.ndarray, int, int], count: int, seed: int
) -> tuple[list[dict], list[dict], float, float]:
    """``count`` random batches as the data module cuts them, padded and packed, and the padding
    fractions of the source and target side over all the batches of the distribution."""
    source_lengths, target_lengths, max_tokens, max_positions = lengths
    batches = pack_batches(source_lengths, target_lengths + 1, max_tokens=max_tokens)
    padded_src = sum(len(b) * int(source_lengths[b].max()) for b in batches)
    padded_tgt = sum(len(b) * int(target_lengths[b].max() + 1) for b in batches)
    src_fraction = 1 - int(source_lengths.sum()) / padded_src
    tgt_fraction = 1 - int((target_lengths + 1).sum()) / padded_tgt
    rng = np.random.default_rng(seed)
    chosen = [batches[i] for i in rng.choice(len(batches), size=min(count, len(batches)), replace=False)]
    source, target = RandomLines(source_lengths, rng), RandomLines(target_lengths, rng)
    sets = [
        [
            PairBatches(source, target, chosen, max_positions=max_positions, packed=packed)[i]
            for i in range(len(chosen))
        ]
        for packed in (False, True)
    ]
    return sets[0], sets[1], src_fraction, tgt_fraction


def training_pass(model: TranslationModel, batches: list[dict]) -> None:
    """Forward + loss + backward of every batch (gradients dropped)."""
    for batch in batches:
        loss, _, tokens = (x.sum() for x in model.token_losses(batch))
        (loss / tokens).backward()
        model.zero_grad(set_to_none=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="batches per distribution")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=os.environ.get("FWP_CACHE"), help="synthetic corpus cache")
    parser.add_argument(
        "--lengths", nargs="+", choices=DISTRIBUTIONS, default=list(DISTRIBUTIONS), help="distributions"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 batches, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds = 2, 2
    require_one_thread_for_cpu_clock(parser, args)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    print(f"machine: {machine()}; clock: {args.clock}; {args.rounds} rounds; {' '.join(sys.argv[1:])}")
    distributions = {
        "synthetic": lambda: synthetic_lengths(args.cache_dir),
        "wmt-like": lambda: wmt_like_lengths(200_000, args.seed, 3584),
        "wmt-like-25k": lambda: wmt_like_lengths(200_000, args.seed, 25_000),
    }
    print(
        f"{'lengths':<12} {'attention':<8} {'src pad':>8} {'tgt pad':>8} {'padded tok/s':>13} "
        f"{'packed tok/s':>13} {'packed/padded':>14}"
    )
    for name in args.lengths:
        padded, packed, src_fraction, tgt_fraction = batch_sets(
            distributions[name](), args.batches, args.seed
        )
        tokens = sum(int((b["tgt_out"] != PAD_ID).sum()) for b in padded)
        for attention, files in ATTENTIONS.items():
            torch.manual_seed(1)
            model = TranslationModel(VOCAB, **config_options(files)).train()
            passes = {"padded": padded, "packed": packed}
            times = interleaved(
                {variant: partial(training_pass, model, batches) for variant, batches in passes.items()},
                args.rounds,
            )
            rate = {variant: tokens / statistics.median(seconds) for variant, seconds in times.items()}
            print(
                f"{name:<12} {attention:<8} {src_fraction:>8.1%} {tgt_fraction:>8.1%} "
                f"{rate['padded']:>13,.0f} {rate['packed']:>13,.0f} {rate['packed'] / rate['padded']:>14.2f}"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
