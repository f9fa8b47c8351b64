"""The maths of fast-weight programmers: feature maps, rules, normalisations, recurrences and the one
entry point a layer calls (``fast_weight_attention``). Layout ``[B, H, T, D]``; fast weight state
``[B, H, d_dot, d_v]``. See docs/ops.md."""

# Imported here, not on first use: chunk registers the fwp:: custom ops before any torch.compile, and a
# backend module first imported inside a compiled graph would break it (importlib is not traceable).
from fwp.ops import chunk, step  # noqa: F401
from fwp.ops.dispatch import BACKENDS, Backend, load_backend, resolve_backend
from fwp.ops.fast_weight import MODES, fast_weight_attention, fast_weight_recurrence
from fwp.ops.feature_maps import (
    FEATURE_MAPS,
    FeatureMap,
    build_feature_map,
    dpfp,
    elu_plus_one,
    favor,
    identity,
    l2_normalize,
    orthogonal_random_projection,
    silu_l2_normalize,
    transposed_orthogonal_projection,
)
from fwp.ops.normalization import (
    NORMALIZATIONS,
    Normalization,
    causal_denominator,
    parse_normalization,
    sum_normalize,
)
from fwp.ops.packed_layout import PackedLayout, checked_layout, packed_layouts
from fwp.ops.packing import (
    cu_seqlens_from_lengths,
    positions_in_sequence,
    sequence_ids,
    sequence_lengths,
    validate_cu_seqlens,
)
from fwp.ops.reference import fast_weight_step, reference_backend
from fwp.ops.rules import RULES, Rule
from fwp.ops.state import FastWeightState

__all__ = [
    "BACKENDS",
    "FEATURE_MAPS",
    "MODES",
    "NORMALIZATIONS",
    "RULES",
    "Backend",
    "FastWeightState",
    "FeatureMap",
    "Normalization",
    "PackedLayout",
    "Rule",
    "build_feature_map",
    "causal_denominator",
    "checked_layout",
    "cu_seqlens_from_lengths",
    "dpfp",
    "elu_plus_one",
    "fast_weight_attention",
    "fast_weight_recurrence",
    "fast_weight_step",
    "favor",
    "identity",
    "l2_normalize",
    "load_backend",
    "orthogonal_random_projection",
    "packed_layouts",
    "parse_normalization",
    "positions_in_sequence",
    "reference_backend",
    "resolve_backend",
    "sequence_ids",
    "sequence_lengths",
    "silu_l2_normalize",
    "sum_normalize",
    "transposed_orthogonal_projection",
    "validate_cu_seqlens",
]
