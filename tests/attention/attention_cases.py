"""What the attention tests share: the specs under test, a float64 module builder, state comparisons."""

from __future__ import annotations

import torch
from torch import Tensor

from fwp.attention import AttentionSpec, AttentionState, KVCache, MultiHeadAttention
from fwp.ops import FastWeightState

D_MODEL, N_HEADS = 16, 2

FAST_WEIGHT_SPECS: dict[str, dict] = {
    "linear": {"name": "linear"},
    "performer": {"name": "performer"},
    "dpfp": {"name": "dpfp"},
    "delta": {"name": "delta"},
    "fast_weight": {"name": "fast_weight"},
    "elu+sum+delta": {"name": "fast_weight", "feature_map": "elu", "normalization": "sum", "rule": "delta"},
    "favor+none+delta": {
        "name": "fast_weight",
        "feature_map": "favor",
        "normalization": "none",
        "rule": "delta",
    },
    "identity+denominator+delta": {
        "name": "fast_weight",
        "feature_map": "identity",
        "normalization": "denominator",
        "rule": "delta",
    },
    "elu+denominator+delta+denominator_write": {
        "name": "fast_weight",
        "feature_map": "elu",
        "normalization": "denominator",
        "rule": "delta",
        "denominator_write": True,
    },
    "elu+sum,denominator+delta": {
        "name": "fast_weight",
        "feature_map": "elu",
        "normalization": ["sum", "denominator"],
        "rule": "delta",
        "sum_eps": 0.0,
    },
    "dpfp+sum,denominator+delta+denominator_write": {
        "name": "delta",
        "normalization": ["sum", "denominator"],
        "denominator_write": True,
    },
    "dpfp+denominator+sum+scores": {"name": "dpfp", "scale": "scores", "eps": 1e-5},
    "deltanet": {"name": "deltanet"},
    "gated_deltanet": {"name": "gated_deltanet"},
    "gla": {"name": "gla"},
    "gla+denominator": {"name": "gla", "normalization": "denominator"},
    "silu_l2+sum+delta+negative_eigenvalues": {
        "name": "fast_weight",
        "feature_map": "silu_l2",
        "normalization": "none",
        "rule": "delta",
        "allow_negative_eigenvalues": True,
    },
}
BACKENDS = ("reference", "step", "auto")
FWM_SPECS: dict[str, dict] = {
    "fwm": {"name": "fwm"},
    "fwm+dpfp": {"name": "fwm", "feature_map": "dpfp", "nu": 2},
}
"""The Fast Weight Memory core (one recurrence, no backend choice)."""

ALL_SPECS: dict[str, dict] = (
    {"softmax": {"name": "softmax"}}
    | {
        f"{label}-{backend}": {**spec, "backend": backend}
        for label, spec in FAST_WEIGHT_SPECS.items()
        for backend in BACKENDS
    }
    | FWM_SPECS
)
"""Every registered preset (each fast-weight one with every backend) and a few extra combinations."""

BIDIRECTIONAL_SPECS: dict[str, dict] = {
    "softmax": {"name": "softmax"},
    "linear": {"name": "linear"},
    "performer": {"name": "performer"},
    "dpfp": {"name": "dpfp"},
    "identity+none+sum": {
        "name": "fast_weight",
        "feature_map": "identity",
        "normalization": "none",
        "rule": "sum",
    },
    "elu+sum+sum": {"name": "fast_weight", "feature_map": "elu", "normalization": "sum", "rule": "sum"},
}
"""Every core that supports causal=False."""


def build_mha(spec: AttentionSpec, **kwargs) -> MultiHeadAttention:
    """A float64 ``MultiHeadAttention`` (d_model 16, 2 heads) in eval mode."""
    return MultiHeadAttention(D_MODEL, N_HEADS, spec, **kwargs).double().eval()


def sequence(batch: int = 2, length: int = 7) -> Tensor:
    """A float64 input ``[B, T, d_model]``."""
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64)


def state_tensors(state: AttentionState) -> list[Tensor]:
    """The tensors of a state, for comparisons."""
    if isinstance(state, KVCache):
        return [state.k, state.v]
    assert isinstance(state, FastWeightState)
    return [x for x in (state.W, state.z, state.conv) if x is not None]


def assert_states_close(actual: AttentionState, expected: AttentionState) -> None:
    assert type(actual) is type(expected)
    for a, e in zip(state_tensors(actual), state_tensors(expected), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
