"""The normalisation options: sum and denominator alone or together (one YAML line), each with its own
ε, the 1/√d_head applied to the output or to the scores, and their error messages (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from fwp.attention import FastWeightAttention, build_attention
from fwp.ops import elu_plus_one


def loop(q, k, v, beta, *, sum_eps, eps, sum_norm, denominator):
    """Delta rule on (optionally sum-normalised) elu + 1 features, read ÷ ``φ(q)·z + ε`` if asked."""
    B, H, T, d = q.shape
    W, z, outputs = torch.zeros(B, H, d, d, dtype=q.dtype), torch.zeros(B, H, d, dtype=q.dtype), []
    for t in range(T):
        phi_q, phi_k = elu_plus_one(q[:, :, t]), elu_plus_one(k[:, :, t])
        if sum_norm:
            phi_q = phi_q / (phi_q.sum(-1, keepdim=True) + sum_eps)
            phi_k = phi_k / (phi_k.sum(-1, keepdim=True) + sum_eps)
        retrieved = torch.einsum("bhd,bhdv->bhv", phi_k, W)
        W = W + phi_k.unsqueeze(-1) * (beta[:, :, t, None] * (v[:, :, t] - retrieved)).unsqueeze(-2)
        z = z + phi_k
        y = torch.einsum("bhd,bhdv->bhv", phi_q, W)
        if denominator:
            y = y / ((phi_q * z).sum(-1, keepdim=True) + eps)
        outputs.append(y)
    return torch.stack(outputs, dim=2)


@pytest.mark.parametrize(
    "normalization",
    ["sum", "denominator", "none", ["sum", "denominator"], ["denominator", "sum"], []],
    ids=str,
)
def test_every_combination_of_the_two_normalisations(normalization) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    beta = torch.rand(2, 2, 7, dtype=torch.float64)
    names = [normalization] if isinstance(normalization, str) else normalization
    eps = {"eps": 0.3} if "denominator" in names else {}
    eps |= {"sum_eps": 0.7} if "sum" in names else {}
    core = FastWeightAttention(4, feature_map="elu", rule="delta", normalization=normalization, **eps)
    y, state = core(q, k, v, beta)
    expected = loop(
        q, k, v, beta, sum_eps=0.7, eps=0.3, sum_norm="sum" in names, denominator="denominator" in names
    )
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    assert (state.z is not None) == ("denominator" in names)


@pytest.mark.parametrize("value", ["both", ["sum", "none"], ["sum", "sum"], ["l2"], 3])
def test_bad_normalization_names_the_option_and_the_combined_form(value) -> None:
    with pytest.raises(ValueError, match=r"normalization must be .*\[sum, denominator\].*got normalization="):
        build_attention({"name": "delta", "normalization": value}, d_head=4)


def test_scale_on_the_scores_cancels_in_the_denominator_except_in_eps() -> None:
    """``scale='scores'`` (official sum-rule layers 4–6): y = (Wq/√d)/(z·q/√d + ε) = Wq/(z·q + ε√d)."""
    torch.manual_seed(1)
    d = 16
    q, k, v = (torch.randn(1, 2, 5, d, dtype=torch.float64) for _ in range(3))
    scores = FastWeightAttention(d, feature_map="elu", rule="sum", normalization="denominator", eps=0.1)
    scores_inside = FastWeightAttention(
        d, feature_map="elu", rule="sum", normalization="denominator", eps=0.1, scale="scores"
    )
    assert scores.output_scale == 1 / math.sqrt(d) and scores_inside.output_scale == 1.0
    phi_q, phi_k = elu_plus_one(q), elu_plus_one(k)
    a = torch.tril(phi_q @ phi_k.transpose(-1, -2)) / math.sqrt(d)
    expected = (a @ v) / (a.sum(-1, keepdim=True) + 0.1)
    torch.testing.assert_close(scores_inside(q, k, v)[0] * scores_inside.output_scale, expected)
    assert (scores(q, k, v)[0] * scores.output_scale - expected).abs().max() > 1e-2
    without_denominator = FastWeightAttention(d, rule="sum", normalization="sum", scale="scores")
    assert without_denominator.output_scale == 1 / math.sqrt(d)


def test_triton_backend_is_refused_at_construction_without_cuda(monkeypatch) -> None:
    """It used to fail at the first training step, 140 lines deep in Triton."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"backend='triton' needs a CUDA device.*'auto'.*'chunk'"):
        build_attention({"name": "delta", "backend": "triton"}, d_head=4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"normalization": "sum", "eps": 1e-5},
            r"eps is the ε of the denominator normalisation, which is off",
        ),
        ({"normalization": "denominator", "sum_eps": 0.0}, r"sum_eps is the ε of the sum normalisation"),
        ({"normalization": "none", "eps": 1e-3}, r"eps is the ε of the denominator"),
        ({"normalization": "denominator", "eps": -1.0}, r"eps must be >= 0"),
    ],
)
def test_an_eps_that_would_be_ignored_is_refused(options: dict, message: str) -> None:
    """``eps`` once also served the sum normalisation; now each ε belongs to one normalisation, and one
    given while its normalisation is off would silently do nothing."""
    with pytest.raises(ValueError, match=message):
        build_attention({"name": "delta", **options}, d_head=4)
