"""The fast-weight layer's chunk size: given, it is used; not given, ``default_chunk_size`` picks 32
for the delta rule with keys at least twice as wide as the values, else 64."""

from __future__ import annotations

import pytest
import torch

from fwp.attention.fast_weight import FastWeightAttention


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"feature_map": "dpfp", "nu": 2}, 32),  # d_dot 64 over d_v 16: the small WikiText-103 model's delta
        ({"feature_map": "dpfp", "nu": 1}, 32),  # d_dot 32 = 2 d_v
        ({"feature_map": "elu"}, 64),  # d_dot = d_v
        ({"feature_map": "dpfp", "nu": 2, "rule": "sum"}, 64),  # measured for the delta rule only
        ({"feature_map": "dpfp", "nu": 2, "chunk_size": 16}, 16),  # given: used as it is
    ],
)
def test_chunk_size_follows_the_shapes_unless_given(options: dict, expected: int) -> None:
    assert FastWeightAttention(16, **options).chunk_size == expected


def test_the_default_chunk_size_gives_the_reference_results() -> None:
    """A DPFP delta layer at its default chunk size (32) equals the reference backend, float64."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 16, dtype=torch.float64) for _ in range(3))
    beta = torch.rand(2, 2, 40, dtype=torch.float64)
    layer = FastWeightAttention(16, feature_map="dpfp", nu=2, backend="chunk")
    reference = FastWeightAttention(16, feature_map="dpfp", nu=2, backend="reference")
    assert layer.chunk_size == 32
    torch.testing.assert_close(layer(q, k, v, beta)[0], reference(q, k, v, beta)[0])


def test_a_chunk_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        FastWeightAttention(16, chunk_size=0)
