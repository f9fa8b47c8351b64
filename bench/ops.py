"""Benchmark of the ``chunk`` fast-weight backend (forward + backward, float32, CPU).

Measured side by side in one run (rounds interleave the variants; medians decide the targets, minima
are shown alongside):

1. chunk vs the reference recurrence (``fwp.ops.reference``, one step at a time with autograd);
2. chunk vs its plain-autograd twin (``bench/plain_chunk.py``: the same chunkwise forward, no custom
   backward);
3. the achieved FLOP/s of chunk (analytic count below) vs a large float32 matmul timed in the same rounds;
   and a floor: chunk's matrix products at the rate of one batched product of their own size
   (``[B H N, C, d] @ [B H N, d, e]``), plus the triangular solve (delta rule), timed in the same
   rounds. No implementation that performs these products runs faster than the floor, so
   plain / floor bounds what plain / chunk can reach on this machine;
4. the peak memory of chunk vs the reference (and the twin), each in a fresh subprocess;
5. the sequence length from which chunked delta attention beats causal
   ``scaled_dot_product_attention`` (forward + backward, same ``B, H, d``).

FLOPs of the chunk backend, forward + backward (what ``fwp/ops/chunk.py`` executes; ``N = ⌈T/C⌉``
chunks per head, ``d`` = key size, ``e`` = value size; a matrix product ``m×k·k×n`` counts ``2mkn``,
the unit-triangular solve ``T = A⁻¹`` counts ``C³``; element-wise work is not counted):

    sum rule:   B H N (C² (8d + 6e) + 12 C d e)
    delta rule: B H N (C³ + C² (14d + 14e) + 20 C d e)

Peak memory: torch's CPU allocator keeps no statistics and ``tracemalloc`` does not see tensor
storage, so each variant runs in a fresh Python process (Linux). It builds the inputs and runs one
forward + backward (warm-up: the first backward of a process also sets up ~34 MB of autograd and
library state that stays); it then resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs`` ← 5; a forked child would otherwise inherit its parent's mark in
``ru_maxrss``), reads ``VmRSS``, runs a second forward + backward and reads ``VmHWM``. The difference
is the extra peak resident memory of a steady-state forward + backward, outputs and gradients
included, on top of inputs and libraries. ``MALLOC_MMAP_THRESHOLD_=65536`` makes glibc give every
tensor-sized block straight back to the OS, so freed memory is not silently reused; figures of a few
MB are coarse.

Run ``python bench/ops.py`` (full, several minutes) or ``python bench/ops.py --quick`` (smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from plain_chunk import plain_chunk_recurrence
from torch import Tensor

from fwp.ops import fast_weight_recurrence, sum_normalize

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = {"now": time.perf_counter}
RULES = ("delta", "sum")
VARIANTS = ("chunk", "plain", "reference")
TARGETS = {"reference": 25.0, "plain": 2.0, "flops": 0.25, "memory": 0.1}


def use_clock(name: str) -> None:
    """Make ``now`` read the clock ``name`` of ``CLOCKS`` (``--clock``)."""
    _clock["now"] = CLOCKS[name]


def require_one_thread_for_cpu_clock(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--clock cpu`` with more than one thread (``args.threads``): that clock counts the
    calling thread's CPU time only, so the other threads' work would go uncounted."""
    if args.clock == "cpu" and args.threads != 1:
        parser.error(
            f"--clock cpu counts one thread's time and needs --threads 1, got --threads {args.threads}"
        )


def now() -> float:
    """The benchmark's clock (``--clock``): wall seconds, or with ``cpu`` the CPU seconds of this
    thread, which with one torch thread is the benchmark's own work and leaves out the time other jobs
    hold the core (their cache and memory traffic still show)."""
    return _clock["now"]()


@dataclass(frozen=True)
class Shape:
    B: int
    H: int
    T: int
    d: int
    e: int


def chunk_flops(rule: str, shape: Shape, chunk_size: int, *, solve: bool = True) -> float:
    """The analytic FLOP count of chunk forward + backward (module docstring); without the triangular
    solve's ``C³`` if ``solve`` is false (matrix products only)."""
    C = min(chunk_size, shape.T)
    d, e = shape.d, shape.e
    if rule == "delta":
        per_chunk = C**3 * solve + C**2 * (14 * d + 14 * e) + 20 * C * d * e
    else:
        per_chunk = C**2 * (8 * d + 6 * e) + 12 * C * d * e
    return shape.B * shape.H * math.ceil(shape.T / C) * per_chunk


def make_inputs(rule: str, shape: Shape, seed: int = 0) -> dict[str, Tensor | None]:
    """Sum-normalised positive features (as DPFP/FAVOR+ with sum normalisation give), random values
    and write strengths, and dense random upstream gradients for ``y`` and the final ``W``."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, d, e = shape.B, shape.H, shape.T, shape.d, shape.e
    q, k = (sum_normalize(torch.rand(B, H, T, d, generator=g)).requires_grad_() for _ in range(2))
    return {
        "q": q,
        "k": k,
        "v": torch.randn(B, H, T, e, generator=g).requires_grad_(),
        "beta": torch.rand(B, H, T, generator=g).requires_grad_() if rule == "delta" else None,
        "W0": torch.zeros(B, H, d, e),
        "grad_y": torch.randn(B, H, T, e, generator=g),
        "grad_W": torch.randn(B, H, d, e, generator=g),
    }


def run_variant(variant: str, rule: str, inputs: dict, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Forward of one variant: ``y`` ``[B, H, T, e]`` and the final ``W``."""
    q, k, v, beta = inputs["q"], inputs["k"], inputs["v"], inputs["beta"]
    if variant == "plain":
        return plain_chunk_recurrence(q, k, v, beta, inputs["W0"], rule=rule, chunk_size=chunk_size)
    y, state = fast_weight_recurrence(q, k, v, beta, rule=rule, backend=variant, chunk_size=chunk_size)
    return y, state.W


def clear_grads(inputs: dict) -> None:
    for name in ("q", "k", "v", "beta", "log_decay"):
        if inputs.get(name) is not None:
            inputs[name].grad = None


def forward_backward(variant: str, rule: str, inputs: dict, chunk_size: int) -> tuple[float, Tensor]:
    """Seconds for one forward + backward, and the output ``y`` (detached)."""
    clear_grads(inputs)
    start = now()
    y, W = run_variant(variant, rule, inputs, chunk_size)
    torch.autograd.backward([y, W], [inputs["grad_y"], inputs["grad_W"]])
    return now() - start, y.detach()


def matmul_seconds(size: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    start = now()
    torch.mm(a, b)
    return now() - start


@dataclass(frozen=True)
class FloorOperands:
    """Operands of the floor's two kernels: one batched product ``[B H N, C, d] @ [B H N, d, e]`` and
    the batched unit-lower-triangular solve ``A X = I`` of the delta rule, ``[B H N, C, C]``."""

    left: Tensor
    right: Tensor
    lower: Tensor
    identity: Tensor

    @classmethod
    def make(cls, shape: Shape, chunk_size: int) -> FloorOperands:
        C = min(chunk_size, shape.T)
        batch = shape.B * shape.H * math.ceil(shape.T / C)
        lower = (0.1 * torch.randn(batch, C, C)).tril_(diagonal=-1)
        left, right = torch.randn(batch, C, shape.d), torch.randn(batch, shape.d, shape.e)
        return cls(left, right, lower, torch.eye(C).expand_as(lower))

    def product_seconds(self, repeats: int = 8) -> float:
        """Seconds per product, from ``repeats`` back to back (one is too short to time reliably)."""
        start = now()
        for _ in range(repeats):
            torch.bmm(self.left, self.right)
        return (now() - start) / repeats

    def solve_seconds(self) -> float:
        start = now()
        torch.linalg.solve_triangular(self.lower, self.identity, upper=False, unitriangular=True)
        return now() - start


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def verdict(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return f"target {'≤' if at_most else '≥'} {target:g}: {'MET' if met else 'NOT MET'}"


def time_variants(args: argparse.Namespace, shape: Shape) -> dict:
    """Interleaved rounds over rules × variants (reference only in its first rounds) and the matmul."""
    inputs = {rule: make_inputs(rule, shape) for rule in RULES}
    times: dict[tuple[str, str], list[float]] = {(r, v): [] for r in RULES for v in VARIANTS}
    outputs: dict[tuple[str, str], Tensor] = {}
    matmul: list[float] = []
    floor = FloorOperands.make(shape, args.chunk_size)
    floor_times: dict[str, list[float]] = {"product": [], "solve": []}
    for rule in RULES:  # warm-up
        for variant in ("chunk", "plain"):
            forward_backward(variant, rule, inputs[rule], args.chunk_size)
    matmul_seconds(args.matmul_size)
    floor.product_seconds(), floor.solve_seconds()
    for round_index in range(args.repeats):
        matmul.append(matmul_seconds(args.matmul_size))
        floor_times["product"].append(floor.product_seconds())
        floor_times["solve"].append(floor.solve_seconds())
        for rule in RULES:
            for variant in VARIANTS:
                if variant == "reference" and round_index >= args.reference_repeats:
                    continue
                seconds, y = forward_backward(variant, rule, inputs[rule], args.chunk_size)
                times[rule, variant].append(seconds)
                outputs[rule, variant] = y
    return {"times": times, "outputs": outputs, "matmul": matmul, "floor": floor_times}


def report_timing(args: argparse.Namespace, shape: Shape, measured: dict) -> None:
    """Medians decide the targets; minima (least disturbed by other processes) are shown alongside."""
    times, outputs = measured["times"], measured["outputs"]
    matmul = {"median": median_ms(measured["matmul"]), "min": 1e3 * min(measured["matmul"])}
    matmul_flops = {stat: 2 * args.matmul_size**3 / (ms / 1e3) for stat, ms in matmul.items()}
    print(f"\n## Forward + backward, float32, {shape}, chunk_size={args.chunk_size}")
    header = f"{'rule':<6} {'variant':<10} {'median ms':>10} {'min ms':>8} {'runs':>5}"
    print(f"{header} {'max|y − y_chunk|/max|y|':>24}")
    for rule in RULES:
        chunk_y = outputs[rule, "chunk"]
        for variant in VARIANTS:
            error = (outputs[rule, variant] - chunk_y).abs().max() / chunk_y.abs().max()
            runs = times[rule, variant]
            print(
                f"{rule:<6} {variant:<10} {median_ms(runs):>10.1f} {1e3 * min(runs):>8.1f} "
                f"{len(runs):>5} {error.item():>24.1e}"
            )
    print(
        f"matmul {args.matmul_size}² float32: median {matmul['median']:.1f} ms = "
        f"{matmul_flops['median'] / 1e9:.1f} GFLOP/s (min {matmul['min']:.1f} ms = "
        f"{matmul_flops['min'] / 1e9:.1f} GFLOP/s)"
    )
    print("\n## Ratios (from medians; from minima in brackets)")
    for rule in RULES:
        chunk_runs = times[rule, "chunk"]
        for variant in ("reference", "plain"):
            ratio = median_ms(times[rule, variant]) / median_ms(chunk_runs)
            best = min(times[rule, variant]) / min(chunk_runs)
            target = verdict(ratio, TARGETS[variant])
            print(f"{rule}: {variant} / chunk = {ratio:.1f}× [{best:.1f}×]  ({target})")
        flops = chunk_flops(rule, shape, args.chunk_size)
        achieved = {"median": flops / (median_ms(chunk_runs) / 1e3), "min": flops / min(chunk_runs)}
        share = {stat: achieved[stat] / matmul_flops[stat] for stat in achieved}
        print(
            f"{rule}: chunk {flops / 1e9:.2f} GFLOP, {achieved['median'] / 1e9:.1f} GFLOP/s = "
            f"{100 * share['median']:.0f}% of the matmul [{100 * share['min']:.0f}%]  "
            f"({verdict(share['median'], TARGETS['flops'])})"
        )
        floor = floor_ms(rule, shape, args.chunk_size, measured["floor"])
        print(
            f"{rule}: floor {floor:.1f} ms (chunk's products at the batched-product rate"
            f"{' + the solve' if rule == 'delta' else ''}); chunk / floor = "
            f"{median_ms(chunk_runs) / floor:.2f}; plain / floor = "
            f"{median_ms(times[rule, 'plain']) / floor:.2f}× (the most plain / chunk can reach here)"
        )


def floor_ms(rule: str, shape: Shape, chunk_size: int, floor_times: dict[str, list[float]]) -> float:
    """The fastest chunk could run (module docstring, item 3): its product FLOPs at the median rate of
    one batched product of their size, plus the median triangular solve for the delta rule."""
    C = min(chunk_size, shape.T)
    product_flops = 2 * shape.B * shape.H * math.ceil(shape.T / C) * C * shape.d * shape.e
    rate = product_flops / statistics.median(floor_times["product"])
    seconds = chunk_flops(rule, shape, chunk_size, solve=False) / rate
    if rule == "delta":
        seconds += statistics.median(floor_times["solve"])
    return 1e3 * seconds


def resident_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (high-water mark) of this process, in kB, from ``/proc/self/status``."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


def probe_memory(args: argparse.Namespace, shape: Shape) -> None:
    """Subprocess side of the memory measurement: print the extra peak RSS (MB) of one forward + backward."""
    torch.set_num_threads(args.threads)
    rule, variant = args.probe_rule, args.probe_variant
    inputs = make_inputs(rule, shape)
    forward_backward(variant, rule, inputs, args.chunk_size)
    clear_grads(inputs)
    Path("/proc/self/clear_refs").write_text("5")
    baseline = resident_kb("VmRSS")
    forward_backward(variant, rule, inputs, args.chunk_size)
    print(json.dumps({"peak_mb": (resident_kb("VmHWM") - baseline) / 1024}))


def measure_memory(args: argparse.Namespace, shape: Shape) -> None:
    print(f"\n## Extra peak resident memory of one forward + backward, {shape} (fresh process each)")
    peaks = {}
    for rule in RULES:
        for variant in args.memory_variants:
            command = [sys.executable, __file__, "--probe-variant", variant, "--probe-rule", rule]
            command += [f"--{name}={value}" for name, value in shape.__dict__.items()]
            command += [f"--chunk-size={args.chunk_size}", f"--threads={args.threads}"]
            environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
            result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
            peaks[rule, variant] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
            print(f"{rule:<6} {variant:<10} {peaks[rule, variant]:>9.1f} MB")
        ratio = peaks[rule, "chunk"] / peaks[rule, "reference"]
        print(f"{rule}: chunk / reference = {ratio:.3f}  ({verdict(ratio, TARGETS['memory'], at_most=True)})")


def chunk_size_sweep(args: argparse.Namespace, shape: Shape) -> None:
    """chunk and its plain twin, forward + backward, for several chunk sizes, interleaved."""
    print(f"\n## chunk (plain twin) forward + backward by chunk size, {shape}, median ms")
    inputs = {rule: make_inputs(rule, shape) for rule in RULES}
    functions = {
        (rule, variant, size): lambda r=rule, v=variant, c=size: forward_backward(v, r, inputs[r], c)
        for rule in RULES
        for variant in ("chunk", "plain")
        for size in args.sweep
    }
    timings = interleaved(functions, args.repeats)
    print(f"{'rule':<6} " + " ".join(f"{'C=' + str(size):>16}" for size in args.sweep))
    for rule in RULES:
        cells = [
            f"{median_ms(timings[rule, 'chunk', c]):.1f} ({median_ms(timings[rule, 'plain', c]):.1f})"
            for c in args.sweep
        ]
        print(f"{rule:<6} " + " ".join(f"{cell:>16}" for cell in cells))


def sdpa_crossover(args: argparse.Namespace) -> None:
    """Delta-rule chunk vs causal softmax attention (SDPA), forward + backward, over T = 2^i."""
    print(
        f"\n## Chunked delta rule vs causal scaled_dot_product_attention (B={args.B}, H={args.H}, d={args.d})"
    )
    print(f"{'T':>6} {'chunk ms':>10} {'sdpa ms':>10} {'sdpa / chunk':>13}")
    faster_from = None
    lengths = [args.scan_min * 2**i for i in range(int(math.log2(args.scan_max / args.scan_min)) + 1)]
    for T in lengths:
        shape = Shape(args.B, args.H, T, args.d, args.d)
        inputs = make_inputs("delta", shape)
        q, k, v = (torch.randn(args.B, args.H, T, args.d, requires_grad=True) for _ in range(3))
        grad = inputs["grad_y"]

        def softmax_attention(q: Tensor = q, k: Tensor = k, v: Tensor = v, grad: Tensor = grad) -> None:
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

        def chunked_delta(inputs: dict = inputs) -> None:
            y, _ = run_variant("chunk", "delta", inputs, args.chunk_size)
            y.backward(inputs["grad_y"])

        repeats = args.scan_repeats if T <= 2048 else 1
        timings = interleaved({"chunk": chunked_delta, "sdpa": softmax_attention}, repeats)
        chunk_ms, sdpa_ms = median_ms(timings["chunk"]), median_ms(timings["sdpa"])
        print(f"{T:>6} {chunk_ms:>10.1f} {sdpa_ms:>10.1f} {sdpa_ms / chunk_ms:>12.2f}×")
        faster_from = (faster_from or T) if chunk_ms < sdpa_ms else None
    if faster_from is None:
        print(f"chunked delta attention is not faster than SDPA up to T = {args.scan_max}")
    else:
        print(f"chunked delta attention is faster than SDPA from T = {faster_from} on (all longer T scanned)")


def interleaved(functions: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[float]]:
    """One warm-up call each, then ``repeats`` rounds calling every function in turn."""
    for function in functions.values():
        function()
    times: dict[Any, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = now()
            function()
            times[name].append(now() - start)
    return times


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    model = models[0] if models else platform.processor()
    return f"{os.cpu_count()} CPUs ({model}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--H", type=int, default=8)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--e", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="wall", help="cpu: this thread's CPU time (--threads 1)"
    )
    parser.add_argument("--repeats", type=int, default=9, help="rounds of chunk and plain")
    parser.add_argument("--reference-repeats", type=int, default=3, help="rounds that include the reference")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--scan-min", type=int, default=256)
    parser.add_argument("--scan-max", type=int, default=8192)
    parser.add_argument("--scan-repeats", type=int, default=3)
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128], help="chunk sizes")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--probe-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--probe-rule", choices=RULES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.T, args.repeats, args.reference_repeats, args.matmul_size = 128, 3, 1, 1024
        args.scan_min, args.scan_max, args.scan_repeats, args.sweep = 64, 256, 1, [32, 64]
        args.memory_variants = ["chunk", "reference"]
    require_one_thread_for_cpu_clock(parser, args)
    if not {"chunk", "reference"} <= set(args.memory_variants):
        parser.error(f"--memory-variants must include chunk and reference, got {args.memory_variants}")
    return args


def main() -> None:
    args = parse_args()
    shape = Shape(args.B, args.H, args.T, args.d, args.e)
    if args.probe_variant:
        probe_memory(args, shape)
        return
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    print(f"# bench/ops.py {' '.join(sys.argv[1:])}\n{machine()}")
    report_timing(args, shape, time_variants(args, shape))
    if args.sweep:
        chunk_size_sweep(args, shape)
    if not args.skip_memory:
        measure_memory(args, shape)
    sdpa_crossover(args)


if __name__ == "__main__":
    main()
