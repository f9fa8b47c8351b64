"""The Transformer block's feed-forward: where its dropouts act."""

from __future__ import annotations

import pytest
import torch

from fwp.model import BlockConfig, FeedForward


def feed_forward(d_ff: int, **options) -> FeedForward:
    """A feed-forward of width 4 through ``d_ff`` hidden units."""
    return FeedForward(BlockConfig(d_model=4, n_heads=1, d_ff=d_ff, **options))


def test_activation_dropout_acts_on_the_hidden_units_only() -> None:
    """``Dropout(W_2 Dropout_a(act(W_1 x)))``: with the residual dropout off and ``activation_dropout``
    on, the output is ``W_2`` applied to the hidden units with some of them zeroed (and rescaled)."""
    torch.manual_seed(0)
    layer = feed_forward(32, dropout=0.0, activation_dropout=0.5).train()
    x = torch.randn(3, 4)
    hidden = torch.relu(layer.expand(x))
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    mask = (torch.rand_like(hidden) >= 0.5) / 0.5  # fwp.model.dropout.Dropout's mask
    torch.testing.assert_close(y, layer.contract(hidden * mask))
    assert not torch.allclose(y, layer.contract(hidden))


def test_activation_dropout_defaults_to_the_residual_rate_and_is_checked() -> None:
    assert feed_forward(8, dropout=0.3).activation_dropout.p == 0.3
    assert feed_forward(8, dropout=0.3, activation_dropout=0.0).activation_dropout.p == 0
    message = r"activation_dropout must be in \[0, 1\), got activation_dropout=1.0"
    with pytest.raises(ValueError, match=message):
        feed_forward(8, dropout=0.1, activation_dropout=1.0)
