"""Child process of the Triton tests: compares the triton backend with the float64 reference.

Run as ``TRITON_INTERPRET=1 python triton_interpreted_cases.py '<json list of cases>'`` so that the
interpreter is on before Triton decorates any kernel. Each case is a dict of the keys of
``DEFAULT_CASE``; for each the script prints, as one JSON list on the last line of stdout, the relative
errors ``max|triton − reference| / max|reference|`` of the output, the final state and the gradients
of ``<y, g_y> + <W_T, g_W> (+ <z_T, g_z>)`` with respect to every input (the reference runs in float64
on the same inputs, rounded to the case's dtype).
"""

from __future__ import annotations

import json
import os
import sys

import torch

from fwp.ops import FastWeightState, fast_weight_recurrence
from fwp.ops.triton_backend import triton_backend
from fwp.ops.triton_tiles import Tiles

DEFAULT_CASE = {
    "rule": "sum",
    "denominator": False,
    "dtype": "float32",
    "B": 2,
    "H": 1,
    "T": 37,
    "d_dot": 12,
    "d_v": 10,
    "chunk_size": 16,
    "tiles": None,
    "via_dispatch": False,
    "seed": 0,
}


def make_inputs(case: dict) -> dict[str, torch.Tensor]:
    """Float64 inputs exactly representable in the case's dtype: sum-normalised positive features (the
    delta rule's setting), β in (0, 1), a random initial state."""
    generator = torch.Generator().manual_seed(case["seed"])
    B, H, T, d_dot, d_v = (case[name] for name in ("B", "H", "T", "d_dot", "d_v"))

    def draw(*shape: int, positive: bool = False) -> torch.Tensor:
        x = torch.rand(*shape, generator=generator, dtype=torch.float64)
        return x + 0.1 if positive else 2 * x - 1

    q, k = (x / x.sum(-1, keepdim=True) for x in (draw(B, H, T, d_dot, positive=True) for _ in range(2)))
    inputs = {"q": q, "k": k, "v": draw(B, H, T, d_v), "W0": draw(B, H, d_dot, d_v)}
    if case["rule"] == "delta":
        inputs["beta"] = draw(B, H, T, positive=True) / 1.1
    if case["denominator"]:
        inputs["z0"] = draw(B, H, d_dot, positive=True)
    dtype = getattr(torch, case["dtype"])
    return {name: x.to(dtype).to(torch.float64) for name, x in inputs.items()}


def outputs_and_gradients(case: dict, inputs: dict[str, torch.Tensor], *, reference: bool) -> dict:
    """``y``, the final state and the gradients of a random linear function of them."""
    dtype = torch.float64 if reference else getattr(torch, case["dtype"])
    leaves = {name: x.to(dtype).requires_grad_() for name, x in inputs.items()}
    state = FastWeightState(leaves["W0"], leaves.get("z0"))
    options = {"rule": case["rule"], "denominator": case["denominator"], "eps": 1e-6}
    q, k, v, beta = leaves["q"], leaves["k"], leaves["v"], leaves.get("beta")
    if reference or case["via_dispatch"] or case["denominator"]:  # the denominator is the dispatch's
        y, final = fast_weight_recurrence(
            q,
            k,
            v,
            beta,
            initial_state=state,
            backend="reference" if reference else "triton",
            chunk_size=case["chunk_size"],
            **options,
        )
    else:
        tiles = None if case["tiles"] is None else Tiles(*case["tiles"])
        y, final = triton_backend(
            q, k, v, beta, state, rule=case["rule"], chunk_size=case["chunk_size"], tiles=tiles
        )
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    results = {"y": y, "W": final.W} | ({"z": final.z} if case["denominator"] else {})
    loss = sum(
        (r.double() * torch.randn(r.shape, generator=generator, dtype=torch.float64)).sum()
        for r in results.values()
    )
    gradients = torch.autograd.grad(loss, list(leaves.values()))
    results |= {f"d{name}": g for name, g in zip(leaves, gradients, strict=True)}
    return {name: r.detach().double() for name, r in results.items()}


def relative_errors(case: dict) -> dict[str, float]:
    inputs = make_inputs(case)
    expected = outputs_and_gradients(case, inputs, reference=True)
    actual = outputs_and_gradients(case, inputs, reference=False)
    return {name: ((actual[name] - x).abs().max() / x.abs().max()).item() for name, x in expected.items()}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    cases = [DEFAULT_CASE | case for case in json.loads(sys.argv[1])]
    print(json.dumps([relative_errors(case) for case in cases]))


if __name__ == "__main__":
    main()
