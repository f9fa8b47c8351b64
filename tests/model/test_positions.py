"""Positional encodings: offsets continue a sequence; learned positions refuse to run out."""

from __future__ import annotations

import math

import pytest
import torch

from fwp.model import LearnedPositions, SinusoidalPositions, positional_encoding


def test_sinusoids_follow_the_formula_and_offsets_slice_a_longer_sequence() -> None:
    encoding = SinusoidalPositions(8)
    x = torch.zeros(1, 10, 8, dtype=torch.float64)
    table = encoding(x)[0]
    assert table[3, 1].item() == pytest.approx(math.sin(3 * 10000 ** (-2 / 8)))
    assert table[3, 5].item() == pytest.approx(math.cos(3 * 10000 ** (-2 / 8)))
    torch.testing.assert_close(encoding(x[:, :4], 6)[0], table[6:])


def test_sinusoids_stay_precise_far_into_a_stream() -> None:
    encoding = SinusoidalPositions(4)
    far = encoding(torch.zeros(1, 1, 4), 10**6)[0, 0]
    assert far[0].item() == pytest.approx(math.sin(10**6), abs=1e-6)


def test_learned_positions_and_unknown_kinds() -> None:
    learned = LearnedPositions(4, max_positions=5)
    x = torch.zeros(1, 2, 4)
    torch.testing.assert_close(learned(x, 3)[0], learned.embedding.weight[3:5])
    with pytest.raises(ValueError, match="max_positions"):
        learned(x, 4)
    with pytest.raises(ValueError, match="position_offset"):
        positional_encoding("none", 4, 5)(x, -1)
    with pytest.raises(ValueError, match="positional"):
        positional_encoding("alibi", 4, 5)
    with pytest.raises(ValueError, match="d_model"):
        SinusoidalPositions(5)
