"""Layer-by-layer parity with the official language-model code (IDSIA/lmtool-fwms, ``src/``), float64.

For every WikiText-103 config of ``conf/lm`` with an official counterpart, the official decoder layer
(attention layer + Transformer-XL's ``PositionwiseFF``, post-norm) is written out below from the
official code's equations, sharing no code with ``fwp``:

- ``attn_type`` 2 (``MultiHeadAttn``), 4/5/6 (``LinearMultiHeadAttn``, ``PerformerMultiHeadAttn``,
  ``DPFPMultiHeadAttn``: an attention matrix whose scores are scaled by 1/√d_head, zeroed above the
  diagonal and divided by their row sum + 1e-5; separate ``q_net`` and ``kv_net``);
- ``attn_type`` 24/25/26, 34/35 and 44/46 (``utils/cuda_fast_weight_layer.py``: one ``qkvb_net``, φ of
  keys and queries divided by its sum, the CUDA kernels ``fast_weight_memory`` — retrieve, write, read —
  and ``fast_weight_sum`` as loops over time, the output scaled by 1/√d_head and, unless
  ``--skip_attn_normalization``, divided by ``z·q + 1e-5``; 44–46 also normalise the write by
  ``z_{t-1}·k_t``, 1 at a fresh start; carry-over passes ``(W, z)`` on).

The framework's block is built from the config's attention spec and norm, its weights copied from the
official layer's; outputs and the fast-weight state must agree over two segments (the second continues
the first's state, as with ``--carry_over_fast_weight``; the attention-matrix layers have no state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fwp.model import BlockConfig, TransformerBlock
from tests.experiments import beyond_the_paper, documented_experiments, experiment_config, model_arguments

D_MODEL, N_HEAD, D_HEAD, D_INNER, T, B = 16, 2, 4, 12, 6, 2
EPS = 1e-5  # the official layers' eps


@dataclass(frozen=True)
class Official:
    """An official layer: ``attn_type``, its feature map, update rule and flags."""

    attn_type: int
    feature: str | None  # elu | dpfp | favor; None: softmax
    rule: str = "sum"  # sum | delta
    matrix_form: bool = False  # attn_type 2, 4, 5, 6: attention matrix, no state
    normalize_attn: bool = True  # not --skip_attn_normalization
    normalized_write: bool = False  # attn_type 44, 45, 46


DELTA_NETWORK = Official(24, "elu", "delta")
OFFICIAL = {
    "softmax": Official(2, None, matrix_form=True),
    "linear": Official(4, "elu", matrix_form=True),
    "performer": Official(5, "favor", matrix_form=True),
    "dpfp": Official(6, "dpfp", matrix_form=True),
    "delta": DELTA_NETWORK,
    "performer_delta": Official(25, "favor", "delta"),
    "dpfp_delta": Official(26, "dpfp", "delta"),
    "linear_carry": Official(34, "elu"),
    "delta_carry": DELTA_NETWORK,
    "linear_sumnorm": Official(34, "elu"),
    "performer_sumnorm": Official(35, "favor"),
    "delta_no_denominator": Official(24, "elu", "delta", normalize_attn=False),
    "delta_denominator_write": Official(44, "elu", "delta", normalized_write=True),
}
NOT_OFFICIAL = {"dpfp_sumnorm"}  # ablations without an official layer
CARRY_EXPERIMENT = "wt103_small_delta_carry"
CONFIGS = sorted(
    name for name in documented_experiments() if name.startswith("wt103_") and name not in beyond_the_paper()
)


def experiment_name(config: str) -> str:
    """The paper row of a WikiText-103 experiment of conf/README.md: ``wt103_small_delta`` → ``delta``."""
    return config.split("_", 2)[2]


def test_every_wikitext_config_is_checked_or_declared_unofficial() -> None:
    names = {experiment_name(config) for config in CONFIGS}
    assert names == set(OFFICIAL) | NOT_OFFICIAL


# ---- the official equations -------------------------------------------------------------------------


def elu_features(x):
    return F.elu(x, 1.0, False) + 1.0


def dpfp_features(x, n_roll=2):
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([x * x.roll(shifts=i, dims=-1) for i in range(1, n_roll + 1)], dim=-1)


def prime(x, proj_matrix, kernel_eps=1e-4):
    """``utils/performer_helper.py``: proj_matrix ``[d_head, m]``."""
    _, m = proj_matrix.shape
    offset = -torch.sum(x**2, dim=-1, keepdim=True) / 2
    u = torch.matmul(x, proj_matrix)
    out = torch.cat([torch.exp(offset + u), torch.exp(offset - u)], dim=-1) + kernel_eps
    return out * (2 * m) ** -0.5


def features(kind: Official, x, p):
    if kind.feature == "elu":
        return elu_features(x)
    if kind.feature == "dpfp":
        return dpfp_features(x)
    return prime(x, p["proj_matrix"])


def fast_weight_memory(q, k, v, beta, W):
    """The delta-rule kernel, one step at a time: ``v̄ = k W``, ``W += β kᵀ(v − v̄)``, ``out = q W``."""
    outputs = []
    for t in range(q.shape[2]):
        k_t, v_t = k[:, :, t], v[:, :, t]
        v_old = torch.einsum("bhd,bhdv->bhv", k_t, W)
        W = W + torch.einsum("bhd,bhv->bhdv", k_t, beta[:, :, t] * (v_t - v_old))
        outputs.append(torch.einsum("bhd,bhdv->bhv", q[:, :, t], W))
    return torch.stack(outputs, dim=2), W


def fast_weight_sum(q, k, v, W):
    """The sum-rule kernel: ``W += kᵀ v``, ``out = q W``."""
    outputs = []
    for t in range(q.shape[2]):
        W = W + torch.einsum("bhd,bhv->bhdv", k[:, :, t], v[:, :, t])
        outputs.append(torch.einsum("bhd,bhdv->bhv", q[:, :, t], W))
    return torch.stack(outputs, dim=2), W


def layer_norm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)


def matrix_attention(kind: Official, h, p):
    """attn_type 2, 4, 5, 6 on ``h`` ``[T, B, d_model]`` (no memory): the attention vector."""
    qlen = h.shape[0]
    head_q = (h @ p["q_net"].T).view(qlen, B, N_HEAD, D_HEAD)
    head_k, head_v = torch.chunk(h @ p["kv_net"].T, 2, -1)
    head_k, head_v = head_k.view(qlen, B, N_HEAD, D_HEAD), head_v.view(qlen, B, N_HEAD, D_HEAD)
    mask = torch.triu(torch.ones(qlen, qlen), diagonal=1).bool()[:, :, None, None]
    if kind.feature is not None:
        head_q, head_k = features(kind, head_q, p), features(kind, head_k, p)
    score = torch.einsum("ibnd,jbnd->ijbn", head_q, head_k) * (1 / D_HEAD**0.5)
    if kind.feature is None:
        prob = F.softmax(score.masked_fill(mask, -float("inf")), dim=1)
    else:
        score = score.masked_fill(mask, 0)
        prob = score / (torch.sum(score, 1, keepdim=True) + 1e-5)
    vec = torch.einsum("ijbn,jbnd->ibnd", prob, head_v)
    return vec.reshape(qlen, B, N_HEAD * D_HEAD), None


def cuda_fast_weight_attention(kind: Official, h, p, mems):
    """attn_type 24/25/26/34/35/44/45/46 on ``h`` ``[T, B, d_model]``: the attention vector and the
    state ``(W, z)`` passed on with ``--carry_over_fast_weight``."""
    slen = h.shape[0]
    if kind.rule == "delta":
        qkvb = (h @ p["qkvb_net"].T).view(slen, B, N_HEAD, 3 * D_HEAD + 1)
        head_q, head_k, head_v, head_beta = torch.split(qkvb, (D_HEAD,) * 3 + (1,), -1)
        head_beta = torch.sigmoid(head_beta).permute(1, 2, 0, 3)
    else:
        qkv = (h @ p["qkvb_net"].T).view(slen, B, N_HEAD, 3 * D_HEAD)
        head_q, head_k, head_v = torch.split(qkv, (D_HEAD,) * 3, -1)
    head_q, head_k, head_v = (x.permute(1, 2, 0, 3) for x in (head_q, head_k, head_v))
    head_q, head_k = features(kind, head_q, p), features(kind, head_k, p)
    head_k = head_k / head_k.sum(-1, keepdim=True)
    head_q = head_q / head_q.sum(-1, keepdim=True)
    d_dot = head_k.shape[-1]
    if kind.normalize_attn:
        denominator_acc = torch.cumsum(head_k, dim=2)
    if mems is None:
        W = torch.zeros(B, N_HEAD, d_dot, D_HEAD, dtype=h.dtype)
        if kind.normalize_attn and kind.normalized_write:
            key_denom = torch.cat(
                [torch.zeros(B, N_HEAD, 1, d_dot, dtype=h.dtype), denominator_acc[:, :, :-1]], 2
            )
            key_denom = torch.einsum("lbij,lbij->lbi", key_denom, head_k)
            key_denom = torch.cat(
                [torch.ones(B, N_HEAD, 1, dtype=h.dtype), key_denom[:, :, 1:]], 2
            ).unsqueeze(-1)
            head_beta = head_beta * key_denom
            head_k = head_k / (key_denom + EPS)
    else:
        W, fast_denom = mems
        if kind.normalize_attn:
            if kind.normalized_write:
                key_denom = torch.cat(
                    [torch.zeros(B, N_HEAD, 1, d_dot, dtype=h.dtype), denominator_acc[:, :, :-1]], 2
                )
                key_denom = key_denom + fast_denom
            denominator_acc = denominator_acc + fast_denom
            if kind.normalized_write:
                key_denom = torch.einsum("lbij,lbij->lbi", key_denom, head_k).unsqueeze(-1)
                head_beta = head_beta * key_denom
                head_k = head_k / (key_denom + EPS)
    if kind.rule == "delta":
        layer_out, W = fast_weight_memory(head_q, head_k, head_v, head_beta, W)
    else:
        layer_out, W = fast_weight_sum(head_q, head_k, head_v, W)
    if kind.normalize_attn:
        denominator = torch.einsum("lbij,lbij->lbi", denominator_acc, head_q).unsqueeze(-1)
        layer_out = (1 / D_HEAD**0.5) * layer_out / (denominator + EPS)
    else:
        layer_out = (1 / D_HEAD**0.5) * layer_out
    layer_out = layer_out.transpose(1, 2).reshape(B, slen, N_HEAD * D_HEAD).transpose(0, 1)
    new_k_acc = denominator_acc[:, :, -1, :].unsqueeze(2) if kind.normalize_attn else None
    return layer_out, (W, new_k_acc)


def official_decoder_layer(kind: Official, h, p, mems=None):
    """``DecoderLayer`` (post-norm, dropout off): attention, ``o_net``, residual, LayerNorm, then
    ``PositionwiseFF``: ``LayerNorm(x + W_2 relu(W_1 x + b_1) + b_2)``."""
    attention = matrix_attention if kind.matrix_form else cuda_fast_weight_attention
    vec, new_mems = attention(kind, h, p) if kind.matrix_form else attention(kind, h, p, mems)
    output = layer_norm(h + vec @ p["o_net"].T, p["ln_attn_w"], p["ln_attn_b"])
    core = F.relu(output @ p["ff1_w"].T + p["ff1_b"]) @ p["ff2_w"].T + p["ff2_b"]
    return layer_norm(output + core, p["ln_ff_w"], p["ln_ff_b"]), new_mems


# ---- weights, copied into the framework's block -----------------------------------------------------


def official_parameters(kind: Official, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def normal(*shape, mean=0.0, std=0.3):
        return mean + std * torch.randn(*shape, generator=generator, dtype=torch.float64)

    p = {
        "o_net": normal(D_MODEL, N_HEAD * D_HEAD),
        "ln_attn_w": normal(D_MODEL, mean=1.0, std=0.1),
        "ln_attn_b": normal(D_MODEL, std=0.1),
        "ff1_w": normal(D_INNER, D_MODEL),
        "ff1_b": normal(D_INNER, std=0.1),
        "ff2_w": normal(D_MODEL, D_INNER),
        "ff2_b": normal(D_MODEL, std=0.1),
        "ln_ff_w": normal(D_MODEL, mean=1.0, std=0.1),
        "ln_ff_b": normal(D_MODEL, std=0.1),
    }
    if kind.matrix_form:
        p |= {"q_net": normal(N_HEAD * D_HEAD, D_MODEL), "kv_net": normal(2 * N_HEAD * D_HEAD, D_MODEL)}
    else:
        p["qkvb_net"] = normal(N_HEAD * (3 * D_HEAD + (kind.rule == "delta")), D_MODEL)
    if kind.feature == "favor":
        p["proj_matrix"] = normal(D_HEAD, 16, std=0.5)  # [d_head, m]; drawn once, eval mode
    return p


def framework_qkv_weight(kind: Official, p) -> torch.Tensor:
    """The official projection(s) as the framework's ``qkv_proj`` (rows grouped per head: q, k, v, β)."""
    if not kind.matrix_form:
        return p["qkvb_net"]
    q, k, v = p["q_net"], *torch.chunk(p["kv_net"], 2, 0)
    heads = [torch.cat([x[h * D_HEAD : (h + 1) * D_HEAD] for x in (q, k, v)]) for h in range(N_HEAD)]
    return torch.cat(heads)


def framework_block(config: str, kind: Official, p) -> TransformerBlock:
    model = model_arguments(experiment_config(config))
    sizes = BlockConfig(
        d_model=D_MODEL, n_heads=N_HEAD, d_ff=D_INNER, d_head=D_HEAD, dropout=0.0, norm=model["norm"]
    )
    block = TransformerBlock(sizes, model["attention"]).double()
    block.eval()
    attention = block.self_attention
    with torch.no_grad():
        attention.qkv_proj.weight.copy_(framework_qkv_weight(kind, p))
        attention.out_proj.weight.copy_(p["o_net"])
        if kind.feature == "favor":
            attention.core.phi.omega.copy_(p["proj_matrix"].T)
        block.self_attention_norm.weight.copy_(p["ln_attn_w"])
        block.self_attention_norm.bias.copy_(p["ln_attn_b"])
        block.feed_forward.expand.weight.copy_(p["ff1_w"])
        block.feed_forward.expand.bias.copy_(p["ff1_b"])
        block.feed_forward.contract.weight.copy_(p["ff2_w"])
        block.feed_forward.contract.bias.copy_(p["ff2_b"])
        block.feed_forward_norm.weight.copy_(p["ln_ff_w"])
        block.feed_forward_norm.bias.copy_(p["ln_ff_b"])
    return block


OFFICIAL_CONFIGS = [config for config in CONFIGS if experiment_name(config) in OFFICIAL]


@pytest.mark.parametrize("config", OFFICIAL_CONFIGS)
def test_config_layer_equals_the_official_layer(config: str) -> None:
    kind = OFFICIAL[experiment_name(config)]
    generator = torch.Generator().manual_seed(0)
    p = official_parameters(kind, generator)
    block = framework_block(config, kind, p)
    x = torch.randn(B, 2 * T, D_MODEL, generator=generator, dtype=torch.float64)
    segments = [x] if kind.matrix_form else [x[:, :T], x[:, T:]]
    mems, state = None, None
    for segment in segments:
        expected, mems = official_decoder_layer(kind, segment.transpose(0, 1), p, mems)
        y, state = block(segment, state=state)
        torch.testing.assert_close(y, expected.transpose(0, 1), rtol=1e-9, atol=1e-10)
        if not kind.matrix_form:
            W, z = mems
            torch.testing.assert_close(state.W, W, rtol=1e-9, atol=1e-10)
            if z is None:
                assert state.z is None
            else:
                torch.testing.assert_close(state.z, z.squeeze(2), rtol=1e-9, atol=1e-10)


def test_the_parity_check_sees_a_wrong_normalisation() -> None:
    """The check is sharp: the Delta Network config's block without the denominator differs."""
    generator = torch.Generator().manual_seed(0)
    p = official_parameters(DELTA_NETWORK, generator)
    block = framework_block("wt103_small_delta", DELTA_NETWORK, p)
    x = torch.randn(B, T, D_MODEL, generator=generator, dtype=torch.float64)
    expected, _ = official_decoder_layer(
        Official(24, "elu", "delta", normalize_attn=False), x.transpose(0, 1), p
    )
    assert (block(x)[0] - expected.transpose(0, 1)).abs().max() > 1e-3
    assert math.isfinite(float(expected.abs().max()))


# ---- the whole model: a carry-over Delta Network (no positional encoding) ---------------------------

VOCAB, CUTOFFS, N_LAYER = 30, [5, 12, 20], 2


def official_log_probs(hidden, target, weight, bias, cluster_weight, cluster_bias):
    """``ProjectedAdaptiveLogSoftmax`` with ``div_val = 1`` and ``d_proj = d_embed`` (no projections):
    ``log p(target)`` ``[N]`` for ``hidden`` ``[N, d]``."""
    ends = [0, *CUTOFFS, VOCAB]
    head_weight = torch.cat([weight[: ends[1]], cluster_weight])
    head_bias = torch.cat([bias[: ends[1]], cluster_bias])
    head_logprob = F.log_softmax(F.linear(hidden, head_weight, head_bias), dim=1)
    logprob = torch.empty(len(target), dtype=hidden.dtype)
    for i in range(len(ends) - 1):
        rows = ((target >= ends[i]) & (target < ends[i + 1])).nonzero().squeeze(1)
        if i == 0:
            logprob[rows] = head_logprob[rows].gather(1, target[rows, None]).squeeze(1)
        else:
            tail = F.linear(hidden[rows], weight[ends[i] : ends[i + 1]], bias[ends[i] : ends[i + 1]])
            tail_logprob = F.log_softmax(tail, dim=1)
            picked = tail_logprob.gather(1, (target[rows] - ends[i])[:, None]).squeeze(1)
            logprob[rows] = head_logprob[rows, -i] + picked
    return logprob


def test_carry_model_equals_the_official_model() -> None:
    """``MemTransformerLM`` (attn_type 24, ``--no_pos --carry_over_fast_weight``, tied adaptive input and
    softmax, div_val 1): embedding × √d_model, the layers, the adaptive softmax; two segments, the fast
    weights carried. The framework's model is built from the experiment ``CARRY_EXPERIMENT`` of
    conf/README.md (sizes shrunk)."""
    from fwp.model import DecoderLM, DecoderLMConfig

    options = model_arguments(experiment_config(CARRY_EXPERIMENT))
    assert options["positional"] == "none" and options["tie_embeddings"] and options["carry_state"]
    generator = torch.Generator().manual_seed(1)
    layers = [official_parameters(DELTA_NETWORK, generator) for _ in range(N_LAYER)]
    weight = 0.5 * torch.randn(VOCAB, D_MODEL, generator=generator, dtype=torch.float64)
    bias = 0.5 * torch.randn(VOCAB, generator=generator, dtype=torch.float64)
    cluster_weight = 0.5 * torch.randn(len(CUTOFFS), D_MODEL, generator=generator, dtype=torch.float64)
    cluster_bias = 0.5 * torch.randn(len(CUTOFFS), generator=generator, dtype=torch.float64)
    config = DecoderLMConfig(
        d_model=D_MODEL,
        n_layers=N_LAYER,
        n_heads=N_HEAD,
        d_head=D_HEAD,
        d_ff=D_INNER,
        attention=options["attention"],
        dropout=0.0,
        positional=options["positional"],
        norm=options["norm"],
        tie_embeddings=True,
        adaptive_cutoffs=CUTOFFS,
        adaptive_div_value=options["adaptive_div_value"],
        init=options["init"],
    )
    model = DecoderLM(VOCAB, config).double()
    model.eval()
    for block, p in zip(model.stack.blocks, layers, strict=True):
        block.load_state_dict(framework_block(CARRY_EXPERIMENT, DELTA_NETWORK, p).state_dict())
    softmax = model.adaptive_softmax
    with torch.no_grad():
        for table, b, low, high in zip(
            softmax.tables, softmax.biases, [0, *CUTOFFS], [*CUTOFFS, VOCAB], strict=True
        ):
            table.copy_(weight[low:high])
            b.copy_(bias[low:high])
        softmax.cluster_weight.copy_(cluster_weight)
        softmax.cluster_bias.copy_(cluster_bias)
    stream = torch.randint(VOCAB, (B, 2 * T + 1), generator=generator)
    states, mems = None, [None] * N_LAYER
    for start in (0, T):
        data, target = stream[:, start : start + T], stream[:, start + 1 : start + T + 1]
        core_out = weight[data.T] * D_MODEL**0.5  # [T, B, d]
        for i, p in enumerate(layers):
            core_out, mems[i] = official_decoder_layer(DELTA_NETWORK, core_out, p, mems[i])
        expected = (
            official_log_probs(
                core_out.reshape(-1, D_MODEL),
                target.T.reshape(-1),
                weight,
                bias,
                cluster_weight,
                cluster_bias,
            )
            .view(T, B)
            .T
        )
        hidden, states = model(data, states=states)
        torch.testing.assert_close(model.target_log_probs(hidden, target), expected, rtol=1e-9, atol=1e-10)
