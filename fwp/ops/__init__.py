"""Tensor functions of fast-weight programmers (no ``nn.Module``): feature maps, normalisations,
recurrences. Layout ``[B, H, T, D]``; fast weight state ``[B, H, d_dot, d_v]``. See docs/attention.md."""

from fwp.ops import chunk  # noqa: F401  (registers the fwp:: custom ops before any torch.compile)
from fwp.ops.bidirectional import read_memory, sum_rule_memory
from fwp.ops.dispatch import BACKENDS, fast_weight_recurrence, load_backend, resolve_backend
from fwp.ops.feature_maps import (
    dpfp,
    elu_plus_one,
    favor,
    feature_dim,
    identity,
    orthogonal_random_projection,
    transposed_orthogonal_projection,
)
from fwp.ops.normalization import causal_denominator, sum_normalize
from fwp.ops.reference import fast_weight_step, reference_backend
from fwp.ops.state import FastWeightState

__all__ = [
    "BACKENDS",
    "FastWeightState",
    "causal_denominator",
    "dpfp",
    "elu_plus_one",
    "fast_weight_recurrence",
    "fast_weight_step",
    "favor",
    "feature_dim",
    "identity",
    "load_backend",
    "orthogonal_random_projection",
    "read_memory",
    "reference_backend",
    "resolve_backend",
    "sum_normalize",
    "sum_rule_memory",
    "transposed_orthogonal_projection",
]
