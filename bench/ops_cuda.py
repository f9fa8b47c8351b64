"""CUDA benchmark of the fast-weight backends: forward + backward throughput against softmax attention.

For each sequence length ``T`` it times one forward and backward pass (gradients into every input) of

- ``triton`` and ``chunk`` (``fwp.ops.fast_weight_recurrence``), sum and delta rule, float32 inputs,
  once with ``torch.backends.cuda.matmul.allow_tf32 = False`` (row tag ``fp32``: chunk's matmuls in
  IEEE float32, triton's products as ``tf32x3``, three TF32 tensor-core products of float32 accuracy)
  and once with ``True`` (tag ``tf32``: both on TF32 tensor cores),
- softmax attention: ``F.scaled_dot_product_attention`` restricted to the FlashAttention kernel,
  causal, bfloat16,

and prints tokens/s (``B·T`` per pass), achieved TFLOP/s and their fraction of the GPU's matmul
throughput measured in the same run (an ``n × n × n`` torch matmul: float32 with and without TF32,
bfloat16).

FLOPs: the fast-weight rows use the analytic forward + backward count of the chunkwise algorithm from
the CPU benchmark (``chunk_flops`` in ``bench/ops.py``; the triton kernels keep the WY pair
``W_k = T diag(β) K``, ``U_0 = T diag(β) V`` where the CPU backend multiplies ``T`` into the residual
``V − K S``: with ``C = d = e``, the defaults, both count the same products; the kernels recompute one
``QKᵀ`` per chunk more in the backward), causal softmax attention ``2T²d`` per head
forward and 2.5× that backward (FlashAttention recomputes the scores, as in its own benchmarks).

Usage: ``python bench/ops_cuda.py [--lengths 512 2048 8192] [--batch 4] [--heads 8] [--dim 64]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from ops import Shape, chunk_flops  # bench/ops.py, the CPU benchmark
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from fwp.ops import fast_weight_recurrence, sum_normalize


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--matmul-size", type=int, default=8192)
    return parser.parse_args()


def milliseconds(run: Callable[[], object], repeats: int) -> float:
    """Mean wall time of ``run`` on the GPU after three warm-up calls."""
    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def matmul_tflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    return 2 * n**3 / milliseconds(lambda: a @ b, repeats) / 1e9


def forward_backward(forward: Callable[..., Tensor], inputs: list[Tensor]) -> Callable[[], object]:
    """One pass: ``forward(*inputs)`` and the gradients of a random linear function into every input."""
    cotangent = torch.randn_like(forward(*inputs))
    return lambda: torch.autograd.grad(forward(*inputs), inputs, cotangent)


def fast_weight_pass(rule: str, backend: str, shape: tuple[int, ...], chunk: int) -> Callable[[], object]:
    B, H, T, d = shape
    q, k = (sum_normalize(torch.rand(B, H, T, d, device="cuda")) for _ in range(2))
    inputs = [q, k, torch.randn(B, H, T, d, device="cuda")]
    if rule == "delta":
        inputs.append(torch.rand(B, H, T, device="cuda"))
    for x in inputs:
        x.requires_grad_()

    def forward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None = None) -> Tensor:
        return fast_weight_recurrence(q, k, v, beta, rule=rule, backend=backend, chunk_size=chunk)[0]

    return forward_backward(forward, inputs)


def flash_attention_pass(shape: tuple[int, ...]) -> Callable[[], object]:
    inputs = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]

    def forward(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return forward_backward(forward, inputs)


def flash_attention_flops(shape: tuple[int, ...]) -> float:
    B, H, T, d = shape
    return 3.5 * B * H * T * 2 * T * d


def print_row(T: int, method: str, ms: float, flops: float, peak: float, batch: int) -> None:
    tflops = flops / ms / 1e9
    tokens_per_second = batch * T / ms * 1e3
    print(f"{T:>6} {method:<28} {ms:>9.3f} {tokens_per_second:>12.3e} {tflops:>8.2f} {tflops / peak:>9.1%}")


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/ops_cuda.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    if importlib.util.find_spec("triton") is None:
        sys.exit("bench/ops_cuda.py needs triton: pip install 'fwp[triton]'")
    torch.manual_seed(0)
    peaks = {}
    for precision in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        peaks[precision] = matmul_tflops(torch.float32, args.matmul_size, args.repeats)
    peaks["bf16"] = matmul_tflops(torch.bfloat16, args.matmul_size, args.repeats)
    measured = ", ".join(f"{name} {value:.1f}" for name, value in peaks.items())
    print(f"GPU: {torch.cuda.get_device_name()}; matmul {args.matmul_size}^3 TFLOP/s: {measured}")
    print(f"B={args.batch} H={args.heads} d={args.dim} chunk={args.chunk_size}; forward + backward")
    print(f"{'T':>6} {'method':<28} {'ms':>9} {'tokens/s':>12} {'TFLOP/s':>8} {'of matmul':>9}")
    for T in args.lengths:
        shape = (args.batch, args.heads, T, args.dim)
        for precision in ("fp32", "tf32"):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            for rule in ("sum", "delta"):
                flops = chunk_flops(rule, Shape(*shape, e=args.dim), args.chunk_size)
                for backend in ("triton", "chunk"):
                    ms = milliseconds(fast_weight_pass(rule, backend, shape, args.chunk_size), args.repeats)
                    method = f"{backend} {rule} {precision}"
                    print_row(T, method, ms, flops, peaks[precision], args.batch)
        ms = milliseconds(flash_attention_pass(shape), args.repeats)
        print_row(T, "softmax flash bf16", ms, flash_attention_flops(shape), peaks["bf16"], args.batch)


if __name__ == "__main__":
    main()
