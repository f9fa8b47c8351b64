"""Transformer-XL's adaptive softmax layout against its formula written out here (float64), and the
refusal of checkpoints of the earlier layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fwp.model import DecoderLM, DecoderLMConfig
from fwp.model.adaptive import AdaptiveLogSoftmax
from fwp.training.checkpointing import CheckpointLoadError


def projected_adaptive_log_softmax(hidden, targets, softmax: AdaptiveLogSoftmax, cutoffs, vocab):
    """``ProjectedAdaptiveLogSoftmax.forward`` (Transformer-XL) from its equations: the head scores
    ``[shortlist, cluster logits]`` with ``cat(E_0, C)``, ``cat(b_0, c)``; a tail token adds the head's
    ``log p`` at column ``-i`` to its cluster's log-softmax. Tables/projections read from ``softmax``."""
    ends = [0, *cutoffs, vocab]
    n = len(cutoffs)

    def logit(x, weight, bias, projection):
        return F.linear(x if projection is None else x @ projection, weight, bias)

    projections = iter(softmax.projections)
    proj = [next(projections) if table.shape[1] < hidden.shape[1] else None for table in softmax.tables]
    head_w = torch.cat([softmax.tables[0], softmax.cluster_weight])
    head_b = torch.cat([softmax.biases[0], softmax.cluster_bias])
    head = F.log_softmax(logit(hidden, head_w, head_b, proj[0]), dim=1)
    out = torch.empty(len(targets), dtype=hidden.dtype)
    for row, t in enumerate(targets.tolist()):
        i = next(c for c in range(n + 1) if ends[c] <= t < ends[c + 1])
        if i == 0:
            out[row] = head[row, t]
        else:
            tail = F.log_softmax(
                logit(hidden[row : row + 1], softmax.tables[i], softmax.biases[i], proj[i]), 1
            )
            out[row] = head[row, -i] + tail[0, t - ends[i]]
    return out


@pytest.mark.parametrize("div_value", [1.0, 2.0])
def test_log_probs_follow_transformer_xl(div_value: float) -> None:
    torch.manual_seed(0)
    vocab, cutoffs, d = 90, [10, 30, 60], 16
    softmax = AdaptiveLogSoftmax(vocab, d, cutoffs, div_value).double()
    with torch.no_grad():  # non-zero biases, so that a dropped bias would show
        for p in [*softmax.biases, softmax.cluster_bias]:
            p.normal_()
    hidden = torch.randn(40, d, dtype=torch.float64)
    targets = torch.cat([torch.arange(0, vocab, 3), torch.tensor([0, 9, 10, 29, 30, 59, 60, 89])])[:40]
    expected = projected_adaptive_log_softmax(hidden, targets, softmax, cutoffs, vocab)
    torch.testing.assert_close(softmax.target_log_prob(hidden, targets), expected, rtol=1e-12, atol=1e-12)
    full = softmax.log_prob(hidden)
    torch.testing.assert_close(full.gather(1, targets[:, None])[:, 0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.exp().sum(1), torch.ones(40, dtype=torch.float64))


def test_div_one_has_one_output_matrix_with_a_bias_and_no_projections() -> None:
    softmax = AdaptiveLogSoftmax(90, 16, [10, 30, 60])
    assert sum(p.numel() for p in softmax.parameters()) == 90 * 16 + 90 + 3 * 16 + 3
    assert len(softmax.projections) == 0


def test_checkpoint_of_the_earlier_layout_is_refused_by_name() -> None:
    model = DecoderLM(
        90, DecoderLMConfig(d_model=16, n_heads=2, adaptive_cutoffs=[10, 30], tie_embeddings=True)
    )
    legacy = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 90, [10, 30])
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("adaptive_softmax.")}
    state |= {f"adaptive_softmax.{k}": v for k, v in legacy.state_dict().items()}
    with pytest.raises(CheckpointLoadError, match=r"adaptive_softmax\.head\.weight.*retrain"):
        model.load_state_dict(state)
