"""Layer-by-layer parity of every retrieval system with the official synthetic code (float64).

``official_forward`` restates, in test code and independently of ``fwp``, the forward pass of the
official models (ischlag/fast-weight-transformers, ``synthetic/linearAttention.py`` and
``softmaxAttention.py``): embeddings, projections, feature maps (elu+1, tanh, DPFP, FAVOR+), the update
rules (``sum``, ``ours`` = delta, ``fwm``) and their reads. Each retrieval config is built as the CLI
builds it, the official parameters are copied into it, and outputs and fast weights must agree.

The one known difference: the official delta rule divides φ(k) by its sum without ε (the query by its
sum + 1e-6); ``fwp``'s sum normalisation adds the same ε = 1e-6 to both. Those systems are compared
exactly with the official equations given that ε on the keys, and within 1e-6 (relative to the largest
entry) of the official ε-free keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from tasks.retrieval.generator import make_batch
from tasks.retrieval.module import RetrievalModel
from tests.experiments import beyond_the_paper, documented_experiments, experiment_config

D = 64  # the official hidden_size, the paper configs' d_key


@dataclass(frozen=True)
class Official:
    """An official model: ``attention_type`` (softmax, linear, tanh, favor, dpfp), its int ``arg`` (m or
    ν) and ``update_rule`` (sum, ours, fwm)."""

    attention_type: str
    arg: int = 0
    update_rule: str = "sum"


SYSTEMS = {
    "setting1_linear": Official("linear"),
    "setting1_dpfp1": Official("dpfp", 1),
    "setting1_dpfp2": Official("dpfp", 2),
    "setting1_dpfp3": Official("dpfp", 3),
    "setting1_favor64": Official("favor", 64),
    "setting1_favor128": Official("favor", 128),
    "setting1_favor512": Official("favor", 512),
    "setting1_softmax": Official("softmax"),
    "setting1_delta": Official("dpfp", 2, "ours"),
    "setting2_linear_sum": Official("linear"),
    "setting2_linear_delta": Official("linear", 0, "ours"),
    "setting2_dpfp_sum": Official("dpfp", 1),
    "setting2_dpfp_delta": Official("dpfp", 1, "ours"),
    "setting2_dpfp2_delta": Official("dpfp", 2, "ours"),
    "setting2_favor_sum": Official("favor", 64),
    "setting2_favor_delta": Official("favor", 64, "ours"),
    "setting2_favor128_delta": Official("favor", 128, "ours"),
    "setting2_fwm": Official("tanh", 0, "fwm"),
    "setting2_dpfp_fwm": Official("dpfp", 1, "fwm"),
}


def official_parameters(S: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The official model's trained parameters (float64), initialised as its ``reset_parameters``
    does for W_k, W_q and embeddings, randomly elsewhere. The key embedding has a row per key and per
    value (the official vocabulary), of which only the keys' rows are used."""
    e = int((S + S) * 1.1)
    u = 1 / math.sqrt(D)

    def uniform(*shape: int, bound: float) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    return {
        "embeddingK": torch.randn(2 * S, e, generator=generator, dtype=torch.float64),
        "W_k.weight": uniform(D, e + S, bound=u),
        "W_k.bias": uniform(D, bound=1 / math.sqrt(e + S)),
        "W_q.weight": uniform(D, e, bound=u),
        "W_q.bias": uniform(D, bound=1 / math.sqrt(e)),
        "W_b.weight": uniform(1, e + S, bound=1 / math.sqrt(e + S)),
        "W_b.bias": uniform(1, bound=1 / math.sqrt(e + S)),
    }


def official_dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    x_rolled = torch.cat([x.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return torch.cat([x] * nu, dim=-1) * x_rolled


def official_prime(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """FAVOR+ features with ``omega`` ``[d, m]`` (the official layout)."""
    m = omega.shape[1]
    offset = (x.norm(dim=-1).pow(2) * 0.5 + 0.5 * math.log(m) + 0.5 * math.log(2)).unsqueeze(-1)
    u = x @ omega
    return torch.cat([torch.exp(u - offset), torch.exp(-u - offset)], dim=-1)


def official_fwm(K: torch.Tensor, V: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """The official FWM loop: K ``[B, L, p]`` features, V ``[B, L, S]``, betas ``[B, L, 1]`` (after the
    sigmoid) → W ``[B, S, p]``."""
    bs, sl = K.shape[:2]
    W = torch.einsum("bv,bk->bvk", V[:, 0], K[:, 0] * betas[:, 0])
    for i in range(1, sl):
        old_v = torch.einsum("bvk,bk->bv", W, K[:, i])
        W = W - torch.einsum("bv,bk->bvk", old_v, K[:, i])
        new_v = betas[:, i] * V[:, i] + (1.0 - betas[:, i]) * old_v
        W = W + torch.einsum("bv,bk->bvk", new_v, K[:, i])
        W = W / (F.relu(W.reshape(bs, -1).norm(dim=-1) - 1) + 1).reshape(bs, 1, 1)
    return W


def official_fwm_read(W: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``layer_norm(W Q)`` over the values, no affine: W ``[B, S, p]``, Q ``[B, l, p]`` → ``[B, l, S]``."""
    return F.layer_norm(torch.einsum("bvp,blp->blv", W, Q), [W.shape[1]])


def official_forward(
    p: dict[str, torch.Tensor],
    x: torch.Tensor,
    q: torch.Tensor,
    system: Official,
    omega: torch.Tensor | None,
    key_eps: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x ``[B, 2, L]`` (key ids 0..S-1, value ids S..2S-1), q ``[B, 1]`` → y ``[B, S]`` and the memory
    (``VK`` ``[B, S, p]``, and ``Z`` ``[B, p]`` for the sum rule; ``K`` for softmax). ``key_eps``: an ε
    added to the delta rule's key sums (the official code has none; fwp adds 1e-6)."""
    S = p["embeddingK"].shape[0] // 2
    v_emb = torch.eye(S, dtype=torch.float64)[x[:, 1] - S]
    inputs = torch.cat([v_emb, p["embeddingK"][x[:, 0]]], dim=-1)
    K = inputs @ p["W_k.weight"].T + p["W_k.bias"]
    V = v_emb
    betas = inputs @ p["W_b.weight"].T + p["W_b.bias"]
    Q = p["embeddingK"][q] @ p["W_q.weight"].T + p["W_q.bias"]
    if system.attention_type == "softmax":
        A = torch.softmax(torch.einsum("bli,bni->bln", K, Q) / math.sqrt(D), dim=1)
        return torch.einsum("bln,bld->bd", A, V), {"K": K}
    if system.attention_type == "linear":
        K, Q = F.elu(K) + 1.0, F.elu(Q) + 1.0
    elif system.attention_type == "tanh":
        K, Q = torch.tanh(K), torch.tanh(Q)
    elif system.attention_type == "favor":
        K, Q = official_prime(K, omega), official_prime(Q, omega)
    else:
        K, Q = official_dpfp(K, system.arg), official_dpfp(Q, system.arg)
    bs, sl = x.shape[0], x.shape[2]
    if system.update_rule == "sum":
        VK, Z = torch.einsum("blv,blk->bvk", V, K), K.sum(dim=1)
        y = torch.einsum("bvp,blp->blv", VK, Q) / (torch.einsum("bp,blp->bl", Z, Q).unsqueeze(-1) + 1e-6)
        return y.squeeze(1), {"VK": VK, "Z": Z}
    betas = torch.sigmoid(betas)
    if system.update_rule == "fwm":
        W = official_fwm(K, V, betas)
        return official_fwm_read(W, Q).squeeze(1), {"VK": W}
    W = torch.zeros(bs, S, K.shape[-1], dtype=torch.float64)
    for i in range(sl):
        k = K[:, i] / (K[:, i].sum(dim=-1, keepdim=True) + key_eps)
        v_bar = torch.einsum("bdp,bp->bd", W, k)
        W = W - torch.einsum("bd,bp->bdp", v_bar, k)
        W = W + torch.einsum("bd,bp->bdp", betas[:, i] * V[:, i] + (1.0 - betas[:, i]) * v_bar, k)
    y = torch.einsum("bvp,blp->blv", W, Q / (Q.sum(dim=-1, keepdim=True) + 1e-6))
    return y.squeeze(1), {"VK": W}


def our_model(config: str, S: int, p: dict[str, torch.Tensor]) -> RetrievalModel:
    """The model of the experiment ``config`` of conf/README.md (its options as the CLI resolves them)
    in float64 with the official parameters copied in."""
    options = experiment_config(config)["model"]["init_args"]
    assert options["d_key"] == D
    model = RetrievalModel(num_keys=S, **options).double()
    with torch.no_grad():
        model.key_embedding.weight.copy_(p["embeddingK"][:S])
        model.write_projection.weight.copy_(torch.cat([p["W_k.weight"], p["W_b.weight"]]))
        model.write_projection.bias.copy_(torch.cat([p["W_k.bias"], p["W_b.bias"]]))
        model.query_projection.weight.copy_(p["W_q.weight"])
        model.query_projection.bias.copy_(p["W_q.bias"])
    return model


def test_every_retrieval_config_has_an_official_counterpart():
    configs = {name for name in documented_experiments() if name.startswith("setting")} - beyond_the_paper()
    assert configs == set(SYSTEMS)


@pytest.mark.parametrize("config", sorted(SYSTEMS))
def test_outputs_and_memory_equal_the_official_model(config):
    system, S, B = SYSTEMS[config], 6, 5
    generator = torch.Generator().manual_seed(0)
    p = official_parameters(S, generator)
    setting = int(config[len("setting")])
    batch = make_batch(S, setting, B, generator, all_queries=False)
    model = our_model(config, S, p).train()  # training mode: a fresh FAVOR+ Ω for the call
    output, state = model(batch.keys, batch.values, batch.queries)
    omega = model.attention.phi.omega.T if system.attention_type == "favor" else None
    x = torch.stack([batch.keys, batch.values + S], dim=1)
    key_eps = 1e-6 if system.update_rule == "ours" else 0.0
    expected, memory = official_forward(p, x, batch.queries, system, omega, key_eps)
    torch.testing.assert_close(output[:, 0], expected, rtol=1e-10, atol=1e-12)
    if system.attention_type == "softmax":
        torch.testing.assert_close(state.k[:, 0], memory["K"], rtol=1e-12, atol=1e-12)
        return
    torch.testing.assert_close(state.W[:, 0], memory["VK"].transpose(1, 2), rtol=1e-10, atol=1e-12)
    if "Z" in memory:
        torch.testing.assert_close(state.z[:, 0], memory["Z"], rtol=1e-10, atol=1e-12)
    if key_eps:
        exact, exact_memory = official_forward(p, x, batch.queries, system, omega)
        for ours, theirs in ((output[:, 0], exact), (state.W[:, 0], exact_memory["VK"].transpose(1, 2))):
            assert (ours - theirs).abs().max() <= 1e-6 * theirs.abs().max()
    assert expected.abs().max() > 1e-3  # a non-trivial comparison


@pytest.mark.parametrize("feature_map", ["tanh", "dpfp"])
def test_fwm_reads_equal_the_official_loop_at_every_step(feature_map):
    """The FWM core alone, outputs at every position: each equals the official read of the memory
    written so far (large inputs, so that the Frobenius rescaling is active)."""
    from fwp.attention.fwm import FastWeightMemoryAttention

    core = FastWeightMemoryAttention(D, feature_map=feature_map, nu=1)
    generator = torch.Generator().manual_seed(1)
    B, T, S = 3, 8, 5
    q, k = (3 * torch.randn(B, 1, T, D, generator=generator, dtype=torch.float64) for _ in range(2))
    v = 4 * torch.randn(B, 1, T, S, generator=generator, dtype=torch.float64)
    beta = torch.rand(B, 1, T, generator=generator, dtype=torch.float64)
    y, _ = core(q, k, v, beta)
    phi_q, phi_k = core.features(q)[:, 0], core.features(k)[:, 0]
    for t in range(T):
        W = official_fwm(phi_k[:, : t + 1], v[:, 0, : t + 1], beta[:, 0, : t + 1, None])
        expected = official_fwm_read(W, phi_q[:, t : t + 1])[:, 0]
        torch.testing.assert_close(y[:, 0, t], expected, rtol=1e-10, atol=1e-12)
    assert W.flatten(1).norm(dim=1).max() == pytest.approx(1.0)  # the rescaling was active
