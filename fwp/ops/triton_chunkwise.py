"""The chunkwise fast-weight recurrence on Triton kernels: kernel launches and the autograd Function.

The maths of every kernel is in ``fwp.ops.triton_kernels``. This module imports Triton; import it
lazily (``fwp.ops.triton_backend`` does) so that Triton stays an optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from fwp.ops.triton_kernels import (
    output_kernel,
    qk_backward_kernel,
    state_backward_kernel,
    state_forward_kernel,
    wy_backward_kernel,
    wy_forward_kernel,
)
from fwp.ops.triton_tiles import Tiles


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision``, all on tensor cores but float64:

    - bf16/fp16 inputs: ``tf32`` (their values are exact in TF32);
    - float32: ``tf32`` when PyTorch allows TF32 matmuls (``torch.backends.cuda.matmul.allow_tf32``),
      else ``tf32x3`` (three TF32 products, float32 accuracy; IEEE FMA tiles compile to code that
      spills heavily);
    - float64: ``ieee``.
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and intermediates are float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class _Launch:
    """Shapes and compile-time constants shared by every kernel launch of one call."""

    BH: int
    T: int
    d_dot: int
    d_v: int
    tiles: Tiles
    acc: torch.dtype
    precision: str
    device: torch.device

    @property
    def n_chunks(self) -> int:
        return triton.cdiv(self.T, self.tiles.chunk)

    @property
    def n_k_tiles(self) -> int:
        return triton.cdiv(self.d_dot, self.tiles.block_k)

    @property
    def n_v_tiles(self) -> int:
        return triton.cdiv(self.d_v, self.tiles.block_v)

    def constants(self) -> dict[str, object]:
        return {
            "DK": self.d_dot,
            "DV": self.d_v,
            "BT": self.tiles.chunk,
            "BK": self.tiles.block_k,
            "BV": self.tiles.block_v,
            "ACC": tl.float64 if self.acc == torch.float64 else tl.float32,
            "PREC": self.precision,
        }

    def compile_options(self) -> dict[str, object]:
        """Triton's compile options of every kernel. Two pipeline stages: the loops over ``d_dot``/``d_v``
        tiles are short, and deeper prefetching pushes the shared memory of the backward kernels past
        the ~100 KB of consumer GPUs. Fused multiply-adds on, explicitly: Triton 3.10 turns its default
        off, which would change the kernels' rounding with the Triton version."""
        return {"num_warps": self.tiles.num_warps, "num_stages": 2, "enable_fp_fusion": True}

    def launch(self, kernel, grid: tuple[int, ...], *args, **constants) -> None:
        """Run ``kernel`` over ``grid`` with the shared compile-time constants and options."""
        kernel[grid](*args, **self.constants(), **constants, **self.compile_options())

    def empty(self, *shape: int) -> Tensor:
        return torch.empty(*shape, dtype=self.acc, device=self.device)


class ChunkwiseFastWeight(torch.autograd.Function):
    """``(O, S_N) = f(Q, K, V, β, S_0)`` on ``[BH, T, D]`` tensors; see ``fwp.ops.triton_kernels``.

    q, k: ``[BH, T, d_dot]``; v: ``[BH, T, d_v]``; beta: ``[BH, T]`` (delta rule) or None (sum rule);
    W0: ``[BH, d_dot, d_v]``. Returns ``O``: ``[BH, T, d_v]`` and ``S_N``: ``[BH, d_dot, d_v]``, both in
    the accumulation dtype. Gradients flow into q, k, v, beta and W0.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None, W0: Tensor, tiles: Tiles):
        BH, T, d_dot = q.shape
        d_v = v.shape[-1]
        run = _Launch(BH, T, d_dot, d_v, tiles, accumulation_dtype(q.dtype), dot_precision(q.dtype), q.device)
        NT = run.n_chunks
        h = run.empty(BH, NT + 1, d_dot, d_v)
        h[:, 0] = W0
        if beta is not None:
            tmat = run.empty(BH, NT, tiles.chunk, tiles.chunk)
            w, u, U = run.empty(BH, T, d_dot), run.empty(BH, T, d_v), run.empty(BH, T, d_v)
            run.launch(wy_forward_kernel, (NT, BH), k, v, beta, tmat, w, u, T)
            run.launch(state_forward_kernel, (run.n_v_tiles, BH), k, u, w, h, U, T, IS_DELTA=True)
        else:
            tmat = w = None
            U = v
            run.launch(state_forward_kernel, (run.n_v_tiles, BH), k, v, k, h, v, T, IS_DELTA=False)
        o = run.empty(BH, T, d_v)
        run.launch(output_kernel, (run.n_v_tiles, NT, BH), q, k, U, h, o, T)
        ctx.save_for_backward(q, k, v, beta, h, U, w, tmat)
        ctx.run = run
        ctx.W0_dtype = W0.dtype
        return o, h[:, NT].clone()

    @staticmethod
    def backward(ctx, do: Tensor, dW: Tensor):
        q, k, v, beta, h, U, w, tmat = ctx.saved_tensors
        run: _Launch = ctx.run
        is_delta = beta is not None
        BH, T, NT, d_dot, d_v = run.BH, run.T, run.n_chunks, run.d_dot, run.d_v
        do = do.to(run.acc).contiguous()
        dh = run.empty(BH, NT + 1, d_dot, d_v)
        dh[:, NT] = dW
        dU = run.empty(BH, T, d_v)
        w_or_unused = w if is_delta else k
        grid = (run.n_v_tiles, BH)
        run.launch(state_backward_kernel, grid, q, k, w_or_unused, do, dh, dU, T, IS_DELTA=is_delta)
        dq, dk = run.empty(BH, T, d_dot), run.empty(BH, T, d_dot)
        dw = run.empty(BH, T, d_dot) if is_delta else dk
        grid = (run.n_k_tiles, NT, BH)
        run.launch(qk_backward_kernel, grid, q, k, U, h, dh, do, dU, dq, dk, dw, T, IS_DELTA=is_delta)
        if is_delta:
            dv, dbeta = run.empty(BH, T, d_v), run.empty(BH, T)
            run.launch(wy_backward_kernel, (NT, BH), k, v, beta, tmat, dw, dU, dk, dv, dbeta, T)
            dbeta = dbeta.to(beta.dtype)
        else:
            dv, dbeta = dU, None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta, dh[:, 0].to(ctx.W0_dtype), None
