"""The per-layer state service: saving, restoring and measuring the states a backbone returns."""

from __future__ import annotations

import pytest
import torch

from fwp.model import fast_weight_norm, saved_state_shape
from tests.model.model_cases import tiny_lm, tokens


def test_saved_states_continue_the_stream_exactly() -> None:
    """Export the states after one segment, import them (through a transform, as a rank would take its
    rows), and the next segment gives the outputs of continuing with the original states."""
    model = tiny_lm("delta")
    first, second = tokens(length=6), tokens(length=5)
    _, states = model(first)
    expected, _ = model(second, states=states, position_offset=6)
    saved = model.export_states(states, lambda tensor: tensor.clone())
    assert saved_state_shape(saved)[0] == first.shape[0] and len(saved["W"]) == len(model.stack.blocks)
    restored = model.import_states(saved, lambda tensor: tensor.to(torch.float64))
    actual, _ = model(second, states=restored, position_offset=6)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_rows_can_be_selected_on_import() -> None:
    """Column ``b`` of a saved stream continues alone as row 0 (what a rank of a larger run does)."""
    model = tiny_lm("delta")
    first, second = tokens(length=4), tokens(length=3)
    _, states = model(first)
    expected, _ = model(second, states=states, position_offset=4)
    row = model.import_states(model.export_states(states), lambda tensor: tensor[1:2])
    actual, _ = model(second[1:2], states=row, position_offset=4)
    torch.testing.assert_close(actual, expected[1:2])


def test_a_key_value_cache_or_another_depth_is_refused() -> None:
    softmax = tiny_lm("softmax")
    _, states = softmax(tokens(length=3))
    with pytest.raises(TypeError, match="layer 0's state is a KVCache, not fast weights"):
        softmax.export_states(states)
    model = tiny_lm("delta")
    _, states = model(tokens(length=3))
    saved = model.export_states(states)
    deeper = {key: values * 2 for key, values in saved.items()}
    with pytest.raises(ValueError, match=r"saved states hold 4 layers, the model has 2"):
        model.import_states(deeper)


def test_fast_weight_norm_is_the_mean_frobenius_norm_of_every_head_together() -> None:
    model = tiny_lm("delta")
    _, states = model(tokens(length=4))
    W = states[0].W
    expected = torch.stack([W[b].pow(2).sum().sqrt() for b in range(W.shape[0])]).mean()
    torch.testing.assert_close(fast_weight_norm(states[0]), expected)
    _, cache = tiny_lm("softmax")(tokens(length=4))
    assert fast_weight_norm(cache[0]) is None and fast_weight_norm(None) is None
