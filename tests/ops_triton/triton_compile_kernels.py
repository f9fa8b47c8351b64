"""Child process of the Triton tests: compiles every kernel for an NVIDIA GPU without one.

Run without ``TRITON_INTERPRET``: ``python triton_compile_kernels.py <sm> <input dtype>``. Triton's
whole pipeline (frontend, TTGIR, LLVM, ``ptxas`` shipped with the wheel) runs for each kernel with the
constants the backend launches it with, for ``Tiles.for_shapes(384, 64, 16)``; this catches what the
interpreter forgives (types of loop-carried values, layouts, shared memory). Prints one line per kernel.
"""

from __future__ import annotations

import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fwp.ops import triton_kernels
from fwp.ops.triton_chunkwise import _Launch, accumulation_dtype, dot_precision
from fwp.ops.triton_tiles import Tiles

KERNELS = [
    ("wy_forward_kernel", {}),
    ("state_forward_kernel", {"IS_DELTA": True}),
    ("state_forward_kernel", {"IS_DELTA": False}),
    ("output_kernel", {}),
    ("state_backward_kernel", {"IS_DELTA": True}),
    ("state_backward_kernel", {"IS_DELTA": False}),
    ("qk_backward_kernel", {"IS_DELTA": True}),
    ("qk_backward_kernel", {"IS_DELTA": False}),
    ("wy_backward_kernel", {}),
]
INPUTS = {"q_ptr", "k_ptr", "v_ptr", "beta_ptr"}
POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1: this compiles for a GPU")
    arch, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
    tiles = Tiles.for_shapes(d_dot=384, d_v=64, chunk_size=16)
    acc = accumulation_dtype(dtype)
    run = _Launch(1, 1, 384, 64, tiles, acc, dot_precision(dtype), torch.device("cuda"))
    for name, flags in KERNELS:
        kernel = getattr(triton_kernels, name)
        constants = run.constants() | flags
        signature = {
            arg: "constexpr"
            if arg in constants
            else (POINTER_TYPES[dtype if arg in INPUTS else acc] if arg.endswith("_ptr") else "i32")
            for arg in kernel.arg_names
        }
        compiled = triton.compile(
            ASTSource(kernel, signature, constants),
            target=GPUTarget("cuda", arch, 32),
            options=run.compile_options(),
        )
        print(name, flags, f"shared={compiled.metadata.shared}", flush=True)


if __name__ == "__main__":
    main()
