"""Benchmark of packed variable-length sequences (``cu_seqlens``) in ``fwp.ops.fast_weight_attention``.

``N`` sequences with lengths drawn uniformly from ``[--min-length, --max-length]`` (default 5–60, like
the sentences of an MT batch), forward + backward of the causal recurrence on feature-mapped inputs
(float32, CPU), three ways in interleaved rounds (medians decide, minima shown alongside):

- ``packed``: one call on ``[1, H, T, d]`` with ``cu_seqlens`` (``T = Σ l_n``), which runs the
  sequences as padded batches of similar lengths (``fwp/ops/packed_layout.py``);
- ``padded``: one call on the padded batch ``[N, H, T_max, d]`` with a ``key_padding_mask``, what a
  model without packing runs;
- ``loop``: one call per sequence ``[1, H, l_n, d]``.

The padding ratios are printed: ``N · T_max / T`` is the work the attention core of ``padded`` does per
real position (and what the token-wise rest of a model, projections, feed-forward and loss, saves by
packing), ``Σ_g N_g T_g / T`` that of ``packed``. Run ``python bench/packed.py`` or, on a
shared machine, ``python bench/packed.py --threads 1 --clock cpu``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from itertools import pairwise

import torch
from ops import (
    CLOCKS,
    clear_grads,
    interleaved,
    machine,
    median_ms,
    require_one_thread_for_cpu_clock,
    use_clock,
)
from torch import Tensor

from fwp.ops import cu_seqlens_from_lengths, fast_weight_attention, sum_normalize
from fwp.ops.packed_layout import PackedLayout

VARIANTS = ("packed", "padded", "loop")


def make_inputs(args: argparse.Namespace) -> dict:
    """Packed leaves ``[1, H, T, ·]`` (sum-normalised positive features, β in (0, 1), log-decays with
    ``--gated``), their offsets, and the padded batch and per-sequence slices of the same values."""
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_length, args.max_length + 1, (args.N,), generator=g)
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    T = int(cu_seqlens[-1])
    packed = {
        "q": sum_normalize(torch.rand(1, args.H, T, args.d, generator=g) + 0.1),
        "k": sum_normalize(torch.rand(1, args.H, T, args.d, generator=g) + 0.1),
        "v": torch.randn(1, args.H, T, args.e, generator=g),
        "beta": torch.rand(1, args.H, T, generator=g) if args.rule == "delta" else None,
        "log_decay": -torch.rand(1, args.H, T, generator=g) if args.gated else None,
    }
    layout = PackedLayout.from_cu_seqlens(cu_seqlens, groups=(tuple(range(args.N)),))  # one padded batch
    offsets = cu_seqlens.tolist()
    named = {name: x for name, x in packed.items() if x is not None}
    sets = {
        "packed": named,
        "padded": {name: layout.unpack(x)[0] for name, x in named.items()},
        "loop": [{name: x[:, :, start:end] for name, x in named.items()} for start, end in pairwise(offsets)],
    }
    for leaves in [sets["packed"], sets["padded"], *sets["loop"]]:
        for name, x in leaves.items():
            leaves[name] = x.contiguous().requires_grad_()
    return {"lengths": lengths, "cu_seqlens": cu_seqlens, "padding": layout.paddings[0], **sets}


def attend(leaves: dict, args: argparse.Namespace, **packing) -> tuple[Tensor, Tensor]:
    """``y`` and the final ``W`` of one call on ``leaves``."""
    y, state = fast_weight_attention(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves.get("beta"),
        log_decay=leaves.get("log_decay"),
        rule=args.rule,
        backend=args.backend,
        chunk_size=args.chunk_size,
        **packing,
    )
    return y, state.W


def forward_backward(variant: str, inputs: dict, args: argparse.Namespace) -> None:
    """One forward + backward of ``variant`` (gradient of ``Σ y + Σ W``)."""
    if variant == "loop":
        calls = [(leaves, {}) for leaves in inputs["loop"]]
    elif variant == "packed":
        calls = [(inputs["packed"], {"cu_seqlens": inputs["cu_seqlens"]})]
    else:
        calls = [(inputs["padded"], {"key_padding_mask": inputs["padding"]})]
    outputs = []
    for leaves, packing in calls:
        clear_grads(leaves)
        outputs += attend(leaves, args, **packing)
    torch.autograd.backward(outputs, [torch.ones_like(x) for x in outputs])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--N", type=int, default=64, help="sequences per batch")
    parser.add_argument("--min-length", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=60)
    parser.add_argument("--H", type=int, default=8)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--e", type=int, default=64)
    parser.add_argument("--rule", choices=("sum", "delta"), default="delta")
    parser.add_argument("--gated", action="store_true", help="with log-decays (the gated rule)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="wall", help="cpu: this thread's CPU time (--threads 1)"
    )
    args = parser.parse_args()
    if args.quick:
        args.N, args.repeats = 8, 2
    require_one_thread_for_cpu_clock(parser, args)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    inputs = make_inputs(args)
    lengths = inputs["lengths"]
    T, longest = int(lengths.sum()), int(lengths.max())
    print(f"# bench/packed.py {' '.join(sys.argv[1:])}\n{machine()}")
    groups = PackedLayout.from_cu_seqlens(inputs["cu_seqlens"]).paddings
    grouped = sum(padding.numel() for padding in groups)
    print(
        f"N={args.N} sequences, lengths {int(lengths.min())}–{longest} (mean {lengths.float().mean():.1f}), "
        f"T={T}; padded batch N·T_max={args.N * longest} positions (ratio {args.N * longest / T:.2f}); "
        f"packed: {len(groups)} groups, Σ N_g·T_g={grouped} positions (ratio {grouped / T:.2f})"
    )
    times = interleaved(
        {variant: lambda v=variant: forward_backward(v, inputs, args) for variant in VARIANTS}, args.repeats
    )
    rule = ("gated " if args.gated else "") + args.rule
    print(
        f"{rule} rule, backend {args.backend}, chunk {args.chunk_size}, H={args.H}, d={args.d}, e={args.e}:"
    )
    packed = statistics.median(times["packed"])
    for variant in VARIANTS:
        median, fastest = statistics.median(times[variant]), min(times[variant])
        print(
            f"  {variant:7s} median {median_ms(times[variant]):8.2f} ms (min {1e3 * fastest:8.2f})"
            f"  {median / packed:5.2f}× packed"
        )


if __name__ == "__main__":
    main()
