"""``torch.compile(fullgraph=True)`` of a ``DecoderLM`` with adaptive input and softmax equals eager:
the loss (every token's target log-probability), the full log-distribution and every gradient,
float64 through ``aot_eager``. Before, the adaptive embedding and softmax broke the graph (an
assignment expression dynamo could not trace, ``.item()`` bounds checks, ``nonzero`` row selection,
a branch on an empty cluster)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fwp.model import DecoderLM, DecoderLMConfig
from tests.model.test_compile import _fresh_dynamo, assert_same_run  # noqa: F401 (fixture)

VOCAB = 60


@pytest.mark.parametrize(("tie", "div_value"), [(True, 1.0), (False, 2.0)], ids=["tied-div1", "untied-div2"])
def test_adaptive_decoder_lm_compiles_to_one_graph_and_equals_eager(tie: bool, div_value: float) -> None:
    config = DecoderLMConfig(
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=24,
        attention="delta",
        dropout=0.0,
        adaptive_cutoffs=[10, 30],
        adaptive_div_value=div_value,
        tie_embeddings=tie,
    )
    model = DecoderLM(VOCAB, config).double()
    x = torch.tensor([[0, 5, 9, 10, 29, 30, 59, 12], [31, 2, 40, 11, 0, 58, 3, 20]])
    targets = torch.roll(x, 1, dims=1)

    def run(m: nn.Module) -> tuple[Tensor, list]:
        hidden, states = m(x)
        scores = torch.cat([m.target_log_probs(hidden, targets), m.log_probs(hidden).flatten(1)], dim=1)
        return scores, states

    assert_same_run(model, run, whole_run=True)
