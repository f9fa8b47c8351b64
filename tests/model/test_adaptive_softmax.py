"""Transformer-XL's adaptive softmax layout against its formula written out here (float64), and the
refusal of checkpoints of the earlier layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fwp.model import DecoderLM, DecoderLMConfig
from fwp.model.adaptive import AdaptiveLogSoftmax, ClusterTables, adaptive_embedding, target_log_softmax
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
    targets = torch.cat([torch.arange(0, vocab, 3), torch.tensor([0, 9, 10, 29, 30, 59, 60, 89])])
    hidden = torch.randn(len(targets), d, dtype=torch.float64)
    expected = projected_adaptive_log_softmax(hidden, targets, softmax, cutoffs, vocab)
    torch.testing.assert_close(softmax.target_log_prob(hidden, targets), expected, rtol=1e-12, atol=1e-12)
    full = softmax.log_prob(hidden)
    torch.testing.assert_close(full.gather(1, targets[:, None])[:, 0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.exp().sum(1), torch.ones(len(targets), dtype=torch.float64))


def parameter_gradients(module: torch.nn.Module, *tensors: torch.Tensor) -> dict:
    """The gradients of ``module``'s parameters by name (None where none arrived) and of ``tensors``
    (by position); all reset."""
    named = [*module.named_parameters(), *enumerate(tensors)]
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in named}
    for _, p in named:
        p.grad = None
    return grads


@pytest.mark.parametrize("div_value", [1.0, 2.0])
def test_target_log_prob_gradients_follow_transformer_xl(div_value: float) -> None:
    """The hand-written backward of ``target_log_softmax`` (∂/∂s = g (onehot − softmax)) equals autograd
    through the formula, float64, for the hidden states and every parameter, with a distinct weight
    per row; the last tail cluster has no target, so its table gets no gradient in either. A wrong sign,
    a missing bias gradient or a row weight applied twice shows here."""
    torch.manual_seed(1)
    vocab, cutoffs, d = 90, [10, 30, 60], 16
    softmax = AdaptiveLogSoftmax(vocab, d, cutoffs, div_value).double()
    with torch.no_grad():
        for p in [*softmax.biases, softmax.cluster_bias]:
            p.normal_()
    targets = torch.tensor([0, 3, 9, 10, 11, 29, 30, 45, 59, 2, 31])
    hidden = torch.randn(len(targets), d, dtype=torch.float64, requires_grad=True)
    row_weights = torch.randn(len(targets), dtype=torch.float64)
    (row_weights * projected_adaptive_log_softmax(hidden, targets, softmax, cutoffs, vocab)).sum().backward()
    expected = parameter_gradients(softmax, hidden)
    (row_weights * softmax.target_log_prob(hidden, targets)).sum().backward()
    actual = parameter_gradients(softmax, hidden)
    assert expected["tables.3"] is None and actual["tables.3"] is None  # no target in [60, 90)
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        if want is not None:
            torch.testing.assert_close(actual[name], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("div_value", [1.0, 2.0])
def test_adaptive_embedding_reads_each_token_from_its_cluster(div_value: float) -> None:
    """``e(t) = E_i[t − c_i] P_iᵀ`` token by token, and its gradients, equal the masked embedding that
    looks every token up in every cluster (float64)."""
    torch.manual_seed(2)
    vocab, cutoffs, d = 90, [10, 30, 60], 16
    tables = ClusterTables(vocab, d, cutoffs, div_value).double()
    tokens = torch.tensor([[0, 9, 10, 29], [30, 59, 60, 89]])
    weights = torch.randn(2, 4, d, dtype=torch.float64)
    ends = [0, *cutoffs, vocab]
    expected = []
    for t in tokens.reshape(-1).tolist():
        i = next(c for c in range(len(ends) - 1) if ends[c] <= t < ends[c + 1])
        table, projection = tables.clusters()[i]
        row = table[t - ends[i]]
        expected.append(row if projection is None else row @ projection)
    (weights.reshape(-1, d) * torch.stack(expected)).sum().backward()
    want = parameter_gradients(tables)
    embedded = adaptive_embedding(tokens, ends, tables.clusters())
    torch.testing.assert_close(embedded, torch.stack(expected).view(2, 4, d).detach(), rtol=1e-12, atol=1e-12)
    (weights * embedded).sum().backward()
    for name, grad in parameter_gradients(tables).items():
        torch.testing.assert_close(grad, want[name], rtol=1e-12, atol=1e-12)


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


def test_a_second_backward_through_the_target_log_softmax_is_refused() -> None:
    """Its backward overwrites the saved scores: a second backward (retain_graph=True) would read the
    overwritten buffer and return wrong gradients silently, so it must raise instead."""
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, requires_grad=True)
    weight, bias = torch.randn(7, 4, requires_grad=True), torch.randn(7, requires_grad=True)
    loss = target_log_softmax(hidden, weight, bias, torch.tensor([0, 3, 6, 2, 2])).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
