"""The DeltaNet family (``deltanet``, ``gated_deltanet``, ``gla``) in the retrieval model, and the paper
systems' model left as it was (tasks/retrieval/module.py's docstring gives the design)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fwp.attention import build_attention
from tasks.retrieval.generator import make_batch
from tasks.retrieval.module import RetrievalModel, key_embedding_size, squared_error

S, D_KEY, BATCH = 7, 8, 3
FAMILY = [
    "deltanet",
    "gated_deltanet",
    "gla",
    {"name": "gated_deltanet", "allow_negative_eigenvalues": True},
]


def family_model(attention) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(num_keys=S, attention=attention, d_key=D_KEY).double()


def setting2_batch():
    """An evaluation batch of Setting 2: L = S pairs drawn with replacement, every key present queried."""
    return make_batch(S, 2, BATCH, torch.Generator().manual_seed(1), all_queries=True)


def query_token_parts(model: RetrievalModel, query: torch.Tensor):
    """The query token ``x_q = [0, e(query)]`` ``[B, 1, S + E]`` and its projected channels."""
    embedded = model.key_embedding(query)
    token = torch.cat([embedded.new_zeros(*query.shape, S), embedded], dim=-1)
    return embedded, token


def read_only_step_inputs(model: RetrievalModel, tokens: torch.Tensor, writes: int):
    """q, k, v, β, log α of ``tokens`` ``[B, T, S + E]`` for the core (heads dim added), the positions
    from ``writes`` on made read-only: value 0, β 0, decay 0 (α = 1), so they write nothing."""
    T = tokens.shape[1]
    projected = model.write_projection(tokens)
    k = projected[..., :-1]
    q = model.query_projection(tokens if model.convolution is not None else tokens[..., S:])
    if model.convolution is not None:
        convolved, _ = model.convolution(torch.cat([q, k], dim=-1))
        q, k = convolved.split(D_KEY, dim=-1)
    written = (torch.arange(T) < writes).to(tokens.dtype)  # [T]
    v = tokens[..., :S] * written[:, None]
    beta = torch.sigmoid(projected[..., -1]) * model.attention.beta_scale * written
    log_decay = model.decay(tokens) * written if model.decay is not None else None
    return q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), beta.unsqueeze(1), log_decay


@pytest.mark.parametrize("attention", FAMILY, ids=str)
def test_all_queries_at_once_equal_each_query_as_the_step_after_the_writes(attention):
    """float64: the model's parallel read of all queries equals, for each query alone, (a) the layer run
    over the L write tokens plus that query's token as step L + 1 (one pass, no carried state) and
    (b) that token as one step continuing the carried state (the convolution's last inputs and the
    memory); the query step writes nothing (value 0, β 0, α 1) and its output is gated by its token."""
    model = family_model(attention)
    batch = setting2_batch()
    output, state = model(batch.keys, batch.values, batch.queries)
    value_codes = F.one_hot(batch.values, S).double()
    write_tokens = torch.cat([value_codes, model.key_embedding(batch.keys)], dim=-1)
    log_decay = {}
    for j in range(batch.queries.shape[1]):
        embedded, query_token = query_token_parts(model, batch.queries[:, j : j + 1])
        tokens = torch.cat([write_tokens, query_token], dim=1)
        q, k, v, beta, log_decay = read_only_step_inputs(model, tokens, writes=batch.keys.shape[1])
        gated = {} if log_decay is None else {"log_decay": log_decay}
        y_pass, _ = model.attention(q, k, v, beta if model.attention.uses_beta else None, **gated)
        step_gated = {} if log_decay is None else {"log_decay": log_decay[..., -1:]}
        if model.convolution is not None:  # the step: convolution continued from the carried inputs
            channels = torch.cat(
                [model.query_projection(query_token), model.write_projection(query_token)[..., :-1]], dim=-1
            )
            convolved, _ = model.convolution(channels, state.conv)
            q_step, k_step = (part.unsqueeze(1) for part in convolved.split(D_KEY, dim=-1))
        else:
            q_step, k_step = q[..., -1:, :], k[..., -1:, :]
        beta_step = beta[..., -1:] if model.attention.uses_beta else None
        y_step, _ = model.attention(q_step, k_step, v[..., -1:, :], beta_step, state=state, **step_gated)
        for y in (y_pass[..., -1:, :], y_step):
            expected = model.output_norm(y, embedded) if model.output_norm is not None else y
            torch.testing.assert_close(output[:, j], expected[:, 0, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", FAMILY, ids=str)
def test_family_presets_build_their_parts_and_learn_from_gradients(attention):
    """Each preset's convolution, decay and gate are the model's parameters and get gradients."""
    model = family_model(attention).float()
    core = build_attention(attention, D_KEY)
    assert (model.convolution is not None) == (core.short_conv > 0)
    assert (model.decay is not None) == core.decay
    assert (model.output_norm is not None) == core.output_gate
    batch = setting2_batch()
    output, _ = model(batch.keys, batch.values, batch.queries)
    assert output.shape == (BATCH, S, S)
    squared_error(output, batch.targets, batch.query_mask).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


PAPER_SYSTEMS = [
    "linear",
    {"name": "dpfp", "nu": 1},
    "delta",
    {"name": "fwm", "feature_map": "tanh"},
    "softmax",
]


@pytest.mark.parametrize("attention", PAPER_SYSTEMS, ids=str)
def test_paper_systems_keep_their_parameters_random_draws_and_loss(attention):
    """The model before the DeltaNet family, restated: under one seed the same parameters are drawn in
    the same order (Embedding, core, W_k|β, W_q, then W_k and W_q redrawn U(±1/√d) or Xavier), nothing
    else is built, and the loss of a batch is the old forward's (q = W_q e(query), no gate): the
    capacity results measured before stay valid."""
    S_, d = 12, 16
    E = key_embedding_size(S_)
    torch.manual_seed(3)
    model = RetrievalModel(num_keys=S_, attention=attention, d_key=d)
    torch.manual_seed(3)
    embedding, core = nn.Embedding(S_, E), build_attention(attention, d)
    write, query = nn.Linear(S_ + E, d + 1), nn.Linear(E, d)
    with torch.no_grad():
        for weight in (write.weight[:d], query.weight):
            if core.is_fast_weight:
                nn.init.uniform_(weight, -1 / math.sqrt(d), 1 / math.sqrt(d))
            else:
                nn.init.xavier_uniform_(weight)
    old = {
        "key_embedding": embedding,
        "attention": core,
        "write_projection": write,
        "query_projection": query,
    }
    expected_state = {
        f"{prefix}.{key}": value
        for prefix, module in old.items()
        for key, value in module.state_dict().items()
    }
    state = model.state_dict()
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)

    batch = make_batch(S_, 2, 4, torch.Generator().manual_seed(0), all_queries=True)
    codes = F.one_hot(batch.values, S_).float()
    projected = write(torch.cat([codes, embedding(batch.keys)], dim=-1))
    k = projected[..., :-1].unsqueeze(1)
    beta = torch.sigmoid(projected[..., -1]).unsqueeze(1) if core.uses_beta else None
    _, memory = core(k, k, codes.unsqueeze(1), beta, causal=True)
    old_output = core.read(query(embedding(batch.queries)).unsqueeze(1), memory).squeeze(1)
    output, _ = model(batch.keys, batch.values, batch.queries)
    loss = squared_error(output, batch.targets, batch.query_mask)
    torch.testing.assert_close(
        loss, squared_error(old_output, batch.targets, batch.query_mask), rtol=0, atol=0
    )
