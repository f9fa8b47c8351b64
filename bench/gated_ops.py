"""Benchmark of the gated chunk backend (``fwp/ops/gated_chunk.py``), forward + backward, float32, CPU.

Measured side by side in one run, in interleaved rounds (medians decide the targets, minima are shown
alongside), for each rule asked for (default: the gated delta rule):

1. gated chunk vs the gated reference recurrence (``fwp/ops/gated_reference.py``, one step at a time
   with autograd); target ≥ 25×;
2. the achieved FLOP/s of gated chunk (analytic count below) vs a large float32 matmul timed in the same
   rounds; target ≥ 40 %;
3. gated chunk vs the ungated chunk backend on the same inputs (what the decay costs);
4. both against ``bench/ops.py``'s floor, timed in the same rounds: the chunk backends' products at the
   rate of one batched product of their own size (``[B H N, C, d] @ [B H N, d, e]``), plus the
   triangular solve for the delta rule. What a backend takes beyond the floor is its element-wise
   work (the decay factors among it), copies and per-operation overhead; the floor's own share of the
   matmul rate bounds what any implementation made of these products can reach here.

FLOPs of the gated chunk backend, forward + backward, as ``fwp/ops/gated_chunk_math.py`` executes them:
the ungated rules' counts (``bench/ops.py``'s ``chunk_flops``; ``N = ⌈T/C⌉`` chunks per head, ``d`` =
key size, ``e`` = value size; a product ``m×k·k×n`` counts ``2mkn``, the unit-triangular solve ``C³``;
element-wise work, the decay factors included, is not counted; the log-decays' gradient comes from
those of q and v, element-wise):

    gated sum rule:   B H N (C² (8d + 6e) + 12 C d e)
    gated delta rule: B H N (C³ + C² (14d + 14e) + 20 C d e)
Log-decays are uniform in ``[--strongest, 0]``; the speed does not depend
on their values.

Clocks (``--clock``): ``wall`` (wall seconds) or ``cpu`` (the CPU seconds of the one benchmark
thread, ``--threads 1``: the time other jobs hold the core is left out, their cache and memory traffic
is not). Every variant and the matmul are timed with the same clock.

Run ``python bench/gated_ops.py`` (several minutes: the reference takes minutes per round on a loaded
2-core machine), ``python bench/gated_ops.py --threads 1 --clock cpu`` on a shared machine, or
``python bench/gated_ops.py --quick`` (smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from ops import (
    CLOCKS,
    FloorOperands,
    Shape,
    chunk_flops,
    clear_grads,
    floor_ms,
    machine,
    matmul_seconds,
    median_ms,
    now,
    require_one_thread_for_cpu_clock,
    use_clock,
    verdict,
)
from ops import make_inputs as ungated_inputs
from torch import Tensor

from fwp.ops import FastWeightState, fast_weight_recurrence
from fwp.ops.gated_chunk import gated_chunk_backend
from fwp.ops.gated_reference import gated_reference_backend

VARIANTS = ("gated chunk", "gated reference", "ungated chunk")
TARGETS = {"reference": 25.0, "flops": 0.40}


def make_inputs(rule: str, shape: Shape, strongest: float, seed: int = 0) -> dict[str, Tensor | None]:
    """``bench/ops.py``'s inputs (sum-normalised positive features, random values and write strengths,
    dense random upstream gradients for ``y`` and the final ``W``) and log-decays uniform in
    ``[strongest, 0]``."""
    inputs = ungated_inputs(rule, shape, seed)
    g = torch.Generator().manual_seed(seed + 1)
    inputs["log_decay"] = (strongest * torch.rand(shape.B, shape.H, shape.T, generator=g)).requires_grad_()
    return inputs


def run_variant(variant: str, rule: str, x: dict, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Forward of one variant: ``y`` ``[B, H, T, e]`` and the final ``W``."""
    if variant == "ungated chunk":
        y, state = fast_weight_recurrence(x["q"], x["k"], x["v"], x["beta"], rule=rule, chunk_size=chunk_size)
        return y, state.W
    backend = gated_chunk_backend if variant == "gated chunk" else gated_reference_backend
    y, state = backend(
        x["q"], x["k"], x["v"], x["beta"], x["log_decay"], FastWeightState(x["W0"]), chunk_size=chunk_size
    )
    return y, state.W


def forward_backward(variant: str, rule: str, x: dict, args: argparse.Namespace) -> tuple[float, Tensor]:
    """Seconds (on ``--clock``) for one forward + backward, and the output ``y`` (detached)."""
    clear_grads(x)
    start = now()
    y, W = run_variant(variant, rule, x, args.chunk_size)
    torch.autograd.backward([y, W], [x["grad_y"], x["grad_W"]])
    return now() - start, y.detach()


def time_variants(args: argparse.Namespace, shape: Shape) -> dict:
    """Interleaved rounds over rules × variants (the reference only in its first rounds), the matmul and
    the floor's kernels."""
    inputs = {rule: make_inputs(rule, shape, args.strongest) for rule in args.rules}
    times: dict[tuple[str, str], list[float]] = {(r, v): [] for r in args.rules for v in VARIANTS}
    outputs: dict[tuple[str, str], Tensor] = {}
    matmul: list[float] = []
    floor = FloorOperands.make(shape, args.chunk_size)
    floor_times: dict[str, list[float]] = {"product": [], "solve": []}
    for rule in args.rules:  # warm-up
        for variant in ("gated chunk", "ungated chunk"):
            forward_backward(variant, rule, inputs[rule], args)
    matmul_seconds(args.matmul_size)
    floor.product_seconds(), floor.solve_seconds()
    for round_index in range(args.repeats):
        matmul.append(matmul_seconds(args.matmul_size))
        floor_times["product"].append(floor.product_seconds())
        floor_times["solve"].append(floor.solve_seconds())
        for rule in args.rules:
            for variant in VARIANTS:
                if variant == "gated reference" and round_index >= args.reference_repeats:
                    continue
                seconds, y = forward_backward(variant, rule, inputs[rule], args)
                times[rule, variant].append(seconds)
                outputs[rule, variant] = y
    return {"times": times, "outputs": outputs, "matmul": matmul, "floor": floor_times}


def report(args: argparse.Namespace, shape: Shape, measured: dict) -> None:
    """The timings, then the ratios with their targets (medians; minima in brackets)."""
    times, outputs = measured["times"], measured["outputs"]
    matmul = {"median": median_ms(measured["matmul"]), "min": 1e3 * min(measured["matmul"])}
    matmul_flops = {stat: 2 * args.matmul_size**3 / (ms / 1e3) for stat, ms in matmul.items()}
    decays = f"log_decay in [{args.strongest}, 0]"
    setting = f"chunk_size={args.chunk_size}, {decays}, {args.clock} clock"
    print(f"\n## Forward + backward, float32, {shape}, {setting}")
    header = f"{'rule':<6} {'variant':<16} {'median ms':>10} {'min ms':>9} {'runs':>5}"
    print(f"{header} {'max|y − y_gated|/max|y|':>24}")
    for rule in args.rules:
        gated_y = outputs[rule, "gated chunk"]
        for variant in VARIANTS:
            runs = times[rule, variant]
            error = (outputs[rule, variant] - gated_y).abs().max() / gated_y.abs().max()
            note = " (no decay)" if variant == "ungated chunk" else ""
            print(
                f"{rule:<6} {variant:<16} {median_ms(runs):>10.1f} {1e3 * min(runs):>9.1f} {len(runs):>5} "
                f"{error.item():>24.1e}{note}"
            )
    print(
        f"matmul {args.matmul_size}² float32: median {matmul['median']:.1f} ms = "
        f"{matmul_flops['median'] / 1e9:.1f} GFLOP/s (min {matmul['min']:.1f} ms = "
        f"{matmul_flops['min'] / 1e9:.1f} GFLOP/s)"
    )
    print("\n## Ratios (from medians; from minima in brackets)")
    for rule in args.rules:
        chunk_runs = times[rule, "gated chunk"]
        reference_runs = times[rule, "gated reference"]
        ratio = median_ms(reference_runs) / median_ms(chunk_runs)
        best = min(reference_runs) / min(chunk_runs)
        target = verdict(ratio, TARGETS["reference"])
        print(f"{rule}: gated reference / gated chunk = {ratio:.1f}× [{best:.1f}×]  ({target})")
        flops = chunk_flops(rule, shape, args.chunk_size)
        achieved = {"median": flops / (median_ms(chunk_runs) / 1e3), "min": flops / min(chunk_runs)}
        share = {stat: achieved[stat] / matmul_flops[stat] for stat in achieved}
        print(
            f"{rule}: gated chunk {flops / 1e9:.2f} GFLOP, {achieved['median'] / 1e9:.1f} GFLOP/s = "
            f"{100 * share['median']:.0f}% of the matmul [{100 * share['min']:.0f}%]  "
            f"({verdict(share['median'], TARGETS['flops'])})"
        )
        ungated_ms = median_ms(times[rule, "ungated chunk"])
        cost = median_ms(chunk_runs) / ungated_ms
        print(f"{rule}: gated chunk / ungated chunk = {cost:.2f} (the decay's cost)")
        floor = floor_ms(rule, shape, args.chunk_size, measured["floor"])
        print(
            f"{rule}: floor {floor:.1f} ms (the products at the batched-product rate"
            f"{' + the solve' if rule == 'delta' else ''}) = "
            f"{100 * flops / (floor / 1e3) / matmul_flops['median']:.0f}% of the matmul; "
            f"gated chunk / floor = {median_ms(chunk_runs) / floor:.2f}, ungated chunk / floor = "
            f"{ungated_ms / floor:.2f}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    parser.add_argument("--rules", nargs="+", choices=("delta", "sum"), default=["delta"])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--H", type=int, default=8)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--e", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--strongest", type=float, default=-1.0, help="log-decays uniform in [strongest, 0]")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7, help="rounds of the chunk variants")
    parser.add_argument("--reference-repeats", type=int, default=2, help="rounds that include the reference")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: this thread's CPU time")
    args = parser.parse_args()
    if args.quick:
        args.T, args.repeats, args.reference_repeats, args.matmul_size = 128, 3, 1, 1024
    if args.strongest > 0:
        parser.error(f"--strongest must be <= 0 (log-decays), got {args.strongest}")
    require_one_thread_for_cpu_clock(parser, args)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    shape = Shape(args.B, args.H, args.T, args.d, args.e)
    print(f"# bench/gated_ops.py {' '.join(sys.argv[1:])}\n{machine()}")
    report(args, shape, time_variants(args, shape))


if __name__ == "__main__":
    main()
