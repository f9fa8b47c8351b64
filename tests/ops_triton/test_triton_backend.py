"""The triton backend against the float64 reference, run in Triton's CPU interpreter (see conftest.py).

Every case checks the output, the final state and the gradients into q, k, v, β and the initial state.
Shapes are tiny (the interpreter is slow) but cover tail chunks, sequences shorter than a chunk,
``d_dot``/``d_v`` split into several tiles, the denominator, and both entry points (the backend and the
dispatch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fwp.ops import FastWeightState
from fwp.ops.triton_backend import triton_backend
from fwp.ops.triton_tiles import Tiles

TOLERANCE = {"float64": 1e-12, "float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


def expected_quantities(case: dict) -> set[str]:
    names = {"y", "W", "dq", "dk", "dv", "dW0"}
    if case.get("rule") == "delta":
        names.add("dbeta")
    if case.get("denominator"):
        names |= {"z", "dz0"}
    return names


def assert_matches_reference(interpreted, cases: list[dict]) -> None:
    failures = []
    for case, errors in zip(cases, interpreted(cases), strict=True):
        assert set(errors) == expected_quantities(case), (case, sorted(errors))
        tolerance = TOLERANCE[case.get("dtype", "float32")]
        failures += [
            f"{case}: {name} {error:.2e}" for name, error in errors.items() if not error <= tolerance
        ]
    assert not failures, "relative errors above tolerance:\n" + "\n".join(failures)


SPLIT_TILES = {"d_dot": 40, "d_v": 24, "tiles": [16, 16, 16]}


def test_sum_rule_matches_reference(interpreted) -> None:
    assert_matches_reference(
        interpreted,
        [
            {"rule": "sum", "denominator": True},
            {"rule": "sum", "chunk_size": 32, "T": 40},
            {"rule": "sum", "dtype": "float64", "T": 24, **SPLIT_TILES},
        ],
    )


def test_delta_rule_matches_reference(interpreted) -> None:
    assert_matches_reference(
        interpreted,
        [
            {"rule": "delta", "denominator": True},
            {"rule": "delta", "chunk_size": 32, "via_dispatch": True},
            {"rule": "delta", "T": 5, "chunk_size": 64},
            {"rule": "delta", "dtype": "float64", "T": 20, **SPLIT_TILES},
        ],
    )


@pytest.mark.slow
def test_half_precision_inputs_match_reference(interpreted) -> None:
    assert_matches_reference(
        interpreted,
        [
            {"rule": rule, "dtype": dtype}  # direct backend calls: half-precision kernel inputs
            for rule in ("sum", "delta")
            for dtype in ("bfloat16", "float16")
        ],
    )


@pytest.mark.slow
def test_dpfp_sized_feature_dimension(interpreted) -> None:
    """``d_dot = 384`` (DPFP ν=3 on d_k=64), delta rule, default tiles: twelve ``d_dot`` tiles of 32."""
    assert Tiles.for_shapes(384, 16, 16).block_k == 32
    assert_matches_reference(interpreted, [{"rule": "delta", "d_dot": 384, "d_v": 16, "T": 20, "B": 1}])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["80", "90"], ids=["ampere", "hopper"])
def test_kernels_compile_for_ampere_and_hopper_gpus(arch: str, tmp_path: Path) -> None:
    """Every kernel through Triton's full GPU pipeline (to sm_80 / sm_90a machine code; no GPU needed)
    with the constants the float32 path launches it with: catches what the interpreter lets through."""
    script = Path(__file__).with_name("triton_compile_kernels.py")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    completed = subprocess.run(
        [sys.executable, str(script), arch, "float32"], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    compiled = [line.split()[0] for line in completed.stdout.splitlines()]
    assert compiled.count("state_forward_kernel") == 2 and len(compiled) == 9, completed.stdout


def small_inputs(device: str = "cpu") -> tuple:
    q = torch.rand(1, 1, 3, 4, device=device)
    v = torch.rand(1, 1, 3, 2, device=device)
    return q, q, v, None, FastWeightState.zeros(1, 1, 4, 2, denominator=False, device=device)


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="device cpu"):
        triton_backend(*small_inputs(), rule="sum", chunk_size=16)


def test_missing_triton_fails_when_called_not_when_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "fwp.ops.triton_backend", raising=False)
    from fwp.ops.triton_backend import triton_backend as fresh_backend

    with pytest.raises(ImportError, match=r"pip install 'fwp\[triton\]'"):
        fresh_backend(*small_inputs(), rule="sum", chunk_size=16)


def test_tiles_follow_the_shapes() -> None:
    assert Tiles.for_shapes(d_dot=384, d_v=64, chunk_size=64) == Tiles(64, 32, 32, num_warps=8)
    assert Tiles.for_shapes(d_dot=12, d_v=10, chunk_size=8) == Tiles(16, 16, 16, num_warps=4)
    assert Tiles.for_shapes(d_dot=64, d_v=64, chunk_size=1000).chunk == 64


@pytest.mark.parametrize(
    ("field", "value"),
    [("chunk", 8), ("chunk", 24), ("block_k", 8), ("block_k", 48), ("block_v", 12), ("num_warps", 3)],
)
def test_tiles_reject_bad_sizes(field: str, value: int) -> None:
    sizes = {"chunk": 16, "block_k": 16, "block_v": 16} | {field: value}
    with pytest.raises(ValueError, match=f"Tiles.{field}"):
        Tiles(**sizes)
