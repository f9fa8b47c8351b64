"""The ``l2`` and ``silu_l2`` feature maps pinned by hand-worked values and plain-Python formulas."""

from __future__ import annotations

import math

import torch

from fwp.ops import build_feature_map


def test_l2_of_a_3_4_vector_is_0_6_0_8() -> None:
    phi = build_feature_map("l2", 2)
    got = phi(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    expected = torch.tensor([[3.0, 4.0]], dtype=torch.float64) / math.sqrt(25 + 1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
    assert phi.d_dot == 2


def test_silu_l2_is_the_unit_vector_of_silu() -> None:
    x = [0.5, -1.0, 2.0]
    silu = [v / (1 + math.exp(-v)) for v in x]
    norm = math.sqrt(sum(v * v for v in silu) + 1e-6)
    got = build_feature_map("silu_l2", 3)(torch.tensor(x, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([v / norm for v in silu], dtype=torch.float64))
