"""The decoding step of fast-weight attention: time and tensor operations per layer and token.

One token through the 16 attention layers of the small WikiText-103 Delta Network
(``conf/lm/wt103_small.yaml``: d_model 128, 8 heads of 16, elu + 1 features, delta rule,
``normalization: [sum, denominator]``, eps 1e-5, sum_eps 0), each layer a ``MultiHeadAttention`` (q/k/v/β
projection, the fast-weight step, output projection) continuing the state of a parallel prefill of
``--context`` tokens, under ``torch.no_grad`` in eval mode, one torch thread. The feed-forward layers,
embeddings and the adaptive softmax are the same for every arm and not timed here (``bench/lm.py``
times the whole model).

Arms, each in its own worker process, timed in interleaved rounds (one block of ``--steps`` tokens per
arm per round; medians reported) so that the load of a shared machine hits all of them alike:

- ``before``: the code of ``--before`` (default: main before the ops refactor and the lean step),
  extracted with ``git archive`` to a temporary directory; its ``auto`` backend ran a token through
  ``fast_weight_step`` (``einsum``) with separate feature-map, normalisation and denominator passes.
- ``reference``: today's code with ``backend: reference`` (the oracle recurrence, same passes as before
  around it).
- ``step``: today's code with ``backend: auto``: the ``step`` backend (``matmul``/``addcmul``, no per-step
  reshapes), q and k feature-mapped and normalised in one pass.

Each arm also reports its tensor operations per layer and token (``torch.profiler``, top-level ``aten``
calls). Run ``python bench/decoding_step.py`` (a few minutes) or ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "10f88d5"
"""main before the ops refactor (issue 12 item 3) and the lean decoding step (issue 14 item 2)."""
ATTENTION = {
    "name": "fast_weight",
    "feature_map": "elu",
    "rule": "delta",
    "normalization": ["sum", "denominator"],
    "eps": 1.0e-5,
    "sum_eps": 0.0,
}
LAYERS, D_MODEL, HEADS, D_HEAD = 16, 128, 8, 16


def worker(arm: str, context: int, batch: int) -> None:
    """Build the layers, prefill, then answer ``<n>`` with the seconds of ``n`` tokens and ``ops`` with
    the top-level aten calls of one token per layer, one line each."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fwp.attention import MultiHeadAttention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = [MultiHeadAttention(D_MODEL, HEADS, ATTENTION, d_head=D_HEAD).eval() for _ in range(LAYERS)]
    x = torch.randn(batch, context + 1, D_MODEL)
    with torch.no_grad():
        states = [layer(x[:, :context])[1] for layer in layers]
    if arm == "reference":
        for layer in layers:
            layer.core.backend = "reference"
    token = x[:, context:]

    def one_token() -> None:
        h = token
        for i, layer in enumerate(layers):
            h, states[i] = layer(h, state=states[i])

    for line in sys.stdin:
        command = line.strip()
        with torch.no_grad():
            if command == "ops":
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    one_token()
                top = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
                print(len(top) / LAYERS, flush=True)
                continue
            start = time.perf_counter()
            for _ in range(int(command)):
                one_token()
            print(time.perf_counter() - start, flush=True)


def extract(rev: str, into: Path) -> Path:
    """The ``fwp`` package of ``rev`` under ``into`` (``git archive``; the working tree is not touched)."""
    archive = subprocess.run(["git", "archive", rev, "fwp"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def start(arm: str, path: Path, args: argparse.Namespace) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        __file__,
        "--worker",
        arm,
        "--context",
        str(args.context),
        "--batch",
        str(args.batch),
    ]
    return subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=path
    )


def ask(process: subprocess.Popen, command: str) -> float:
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return float(process.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' arm")
    parser.add_argument("--context", type=int, default=256, help="prefilled tokens")
    parser.add_argument("--batch", type=int, default=1, help="rows decoded together (beams)")
    parser.add_argument("--steps", type=int, default=50, help="tokens per arm per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 tokens")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.context, args.batch)
        return
    if args.quick:
        args.rounds, args.steps = 3, 10
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"before": extract(args.before, Path(tmp)), "reference": ROOT, "step": ROOT}
        workers = {arm: start(arm, path, args) for arm, path in paths.items()}
        ops = {arm: ask(process, "ops") for arm, process in workers.items()}
        for process in workers.values():
            ask(process, str(args.steps))  # warm-up
        times: dict[str, list[float]] = {arm: [] for arm in workers}
        for _ in range(args.rounds):
            for arm, process in workers.items():
                times[arm].append(ask(process, str(args.steps)) / args.steps)
        for process in workers.values():
            process.stdin.close()
            process.wait()
    load = os.getloadavg()[0]
    print(
        f"decoding step, {LAYERS} attention layers (d_model {D_MODEL}, {HEADS} heads of {D_HEAD}, WT103 "
        f"Delta Network), batch {args.batch}, context {args.context}; {args.rounds} rounds x {args.steps} "
        f"tokens, 1 thread, load average {load:.1f}; before = {args.before}"
    )
    print(f"{'arm':<10} {'ms/token':>9} {'us/layer':>9} {'aten ops/layer':>15} {'vs before':>10}")
    before = statistics.median(times["before"])
    for arm, seconds in times.items():
        median = statistics.median(seconds)
        print(
            f"{arm:<10} {1e3 * median:>9.3f} {1e6 * median / LAYERS:>9.1f} {ops[arm]:>15.0f} "
            f"{before / median:>9.2f}x"
        )


if __name__ == "__main__":
    main()
