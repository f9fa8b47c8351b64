"""Fast-weight attention: the parameters of a layer of docs/attention.md and one call into ``fwp.ops``.

The maths (feature map, normalisations, update rule, causal / bidirectional / read modes) is
``fwp.ops.fast_weight_attention``'s; this module holds what a layer is made of: its feature map ``φ``
(a ``fwp.ops.FeatureMap`` submodule, FAVOR+'s Ω a buffer in it), its ``Normalization``, its rule and
backend, and where the 1/√d_head goes (``scale``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

from torch import Tensor

from fwp.attention.base import AttentionCore
from fwp.ops import (
    BACKENDS,
    RULES,
    FastWeightState,
    Normalization,
    build_feature_map,
    fast_weight_attention,
    parse_normalization,
)
from fwp.ops.dispatch import require_backend_usable, require_gated_backend
from fwp.ops.feature_maps import FEATURE_MAPS
from fwp.ops.validation import require_at_least, require_choice

FeatureMapName = Literal["identity", "elu", "dpfp", "favor", "tanh", "l2", "silu_l2"]
NormalizationName = Literal["sum", "denominator", "none"]
Rule = Literal["sum", "delta"]
Redraw = Literal["train", "always", "never"]
Scale = Literal["output", "scores"]
OmegaDraw = Literal["orthogonal", "transposed"]

SCALES = ("output", "scores")
FEATURE_MAP_OPTIONS = ("nu", "m", "redraw", "omega_draw", "feature_eps")


def moved_omega(module: AttentionCore, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Load hook: checkpoints written before the feature map became a submodule hold FAVOR+'s Ω at
    ``<prefix>omega``; it lives at ``<prefix>phi.omega`` now."""
    if prefix + "omega" in state_dict:
        state_dict[prefix + "phi.omega"] = state_dict.pop(prefix + "omega")


def default_chunk_size(rule: str, decay: bool, d_dot: int, d_v: int) -> int:
    """The chunk size of the ``chunk`` backend when the layer is given none: 32 for the (ungated) delta
    rule when the keys are at least twice as wide as the values (``d_dot ≥ 2 d_v``, e.g. DPFP ν = 2 at
    ``d_head`` 16: ``d_dot`` 64), else 64. Measured forward + backward on one CPU thread (ms, chunk
    32 / 64): ``d_dot`` 64, ``d_v`` 16, 8 heads: 45.5 / 55.8 at ``[8, T = 256]``, 51.2 / 59.5 at ``[1,
    T = 2048]``; ``d_dot`` 128, ``d_v`` 32: 86.7 / 91.9 and 76.2 / 87.8; but ``d_dot = d_v`` = 64, 4
    heads: 34.9 / 38.7 and 49.0 / 35.6. The intra-chunk terms cost ``∝ C² (d_dot + d_v)`` against the
    state's ``∝ C d_dot d_v`` per chunk, so wide keys over narrow values favour shorter chunks."""
    return 32 if rule == "delta" and not decay and d_dot >= 2 * d_v else 64


class FastWeightAttention(AttentionCore):
    """A fast weight programmer layer over projected heads; the defaults are the paper's delta preset.

    Options:
    - ``feature_map``: a name of ``fwp.ops.FEATURE_MAPS``: ``identity``, ``elu`` (elu + 1), ``dpfp``
      (order ``nu``), ``favor`` (``m`` random features, ``feature_eps`` added to every feature before
      the 1/√(2m) scaling), ``tanh``; built as the submodule ``phi`` with the options its class takes.
    - ``redraw`` (favor's ``Ω``, a persistent buffer ``[m, d_head]``, redrawn only at the start of a
      sequence, i.e. a ``forward`` without state): ``train`` — while training, frozen in eval;
      ``always`` — eval included; ``never``. ``omega_draw``: ``orthogonal`` (``m`` orthogonal rows in
      blocks of ``d_head``, χ_{d_head} norms; Choromanski et al.) or ``transposed`` (the official LM
      code's draw, ``fwp.ops.transposed_orthogonal_projection``).
    - ``normalization``: ``sum`` (of φ(k) and φ(q)), ``denominator`` (Katharopoulos), ``none``, or the
      list ``[sum, denominator]`` (both).
    - ``rule``: ``sum`` or ``delta`` (needs β; causal only).
    - ``eps``: the denominator's ε (``φ(q)·z + ε``); ``sum_eps``: the sum normalisation's
      (``Σ_j φ_j + ε_sum``); both 1e-6 unless given, and refused when their normalisation is off.
    - ``scale``: where the 1/√d_head of the layer applies. ``output`` (``output_scale``, applied by
      ``MultiHeadAttention``): ``y ← y/√d_head``. ``scores``: to the scores ``φ(q)·φ(k)`` as in the
      official sum-rule LM layers, so that with the denominator it cancels except in ε:
      ``y = (W φ(q)/√d) / (z·φ(q)/√d + ε) = W φ(q) / (z·φ(q) + ε√d)``.
    - ``denominator_write``: with ``rule='delta'`` and the denominator on, normalise each write by
      ``z_{t-1}·φ(k_t)`` (module docstring), the variant that keeps the denominator with the delta rule.
    - ``backend``, ``chunk_size``: the causal recurrence's (``fwp.ops.dispatch``); ``triton`` needs CUDA.
      ``chunk_size`` None: ``default_chunk_size`` of the layer's shapes.
    - ``short_conv``: kernel length of a causal depthwise convolution + SiLU on q, k, v before the
      feature map (0: none), with its own carried state; ``output_gate``: every head's output
      RMS-normalised and gated by ``silu(x W_g)``; ``decay``: the gated rule, with Gated DeltaNet's
      ``log α_t = −A · softplus(a_t + b)`` per head (causal only; no Triton kernel);
      ``allow_negative_eigenvalues``: β = 2·sigmoid ∈ (0, 2) (delta rule). The parameters of these live
      in ``MultiHeadAttention`` (``fwp.attention.parametrisation``), which knows ``d_model`` and ``H``.

    The output is in ``v``'s dtype; the state is a ``FastWeightState`` in the compute dtype.
    """

    is_fast_weight = True

    def __init__(
        self,
        d_head: int,
        *,
        feature_map: FeatureMapName = "dpfp",
        nu: int = 2,
        m: int = 16,
        redraw: Redraw = "train",
        omega_draw: OmegaDraw = "orthogonal",
        feature_eps: float = 0.0,
        normalization: NormalizationName | list[NormalizationName] = "sum",
        rule: Rule = "delta",
        eps: float | None = None,
        sum_eps: float | None = None,
        scale: Scale = "output",
        denominator_write: bool = False,
        backend: str = "auto",
        chunk_size: int | None = None,
        short_conv: int = 0,
        output_gate: bool = False,
        decay: bool = False,
        allow_negative_eigenvalues: bool = False,
    ) -> None:
        super().__init__(d_head)
        require_choice("feature_map", feature_map, tuple(FEATURE_MAPS))
        require_choice("rule", rule, tuple(RULES))
        require_choice("scale", scale, SCALES)
        require_choice("backend", backend, ("auto", *BACKENDS))
        if decay:
            require_gated_backend(backend)
        require_backend_usable(backend)
        if chunk_size is not None:
            require_at_least("chunk_size", chunk_size, 1)
        require_at_least("short_conv", short_conv, 0)
        if allow_negative_eigenvalues and not RULES[rule].uses_beta:
            raise ValueError(f"allow_negative_eigenvalues scales β, which rule={rule!r} does not use")
        given = {"nu": nu, "m": m, "redraw": redraw, "omega_draw": omega_draw, "feature_eps": feature_eps}
        own = {option: given[option] for option in FEATURE_MAPS[feature_map].options}
        self.phi = build_feature_map(feature_map, d_head, **own)
        if denominator_write and (rule != "delta" or "denominator" not in parse_normalization(normalization)):
            raise ValueError(
                "denominator_write=True needs rule='delta' and the denominator normalisation, got "
                f"rule={rule!r}, normalization={normalization!r}"
            )
        norm = Normalization.from_options(
            normalization, eps=eps, sum_eps=sum_eps, denominator_write=denominator_write
        )
        scores_scaled = scale == "scores" and norm.denominator
        self.output_scale = 1.0 if scores_scaled else 1.0 / math.sqrt(d_head)
        self.normalization_spec = replace(norm, eps=norm.eps * math.sqrt(d_head)) if scores_scaled else norm
        self.feature_map, self.rule, self.scale = feature_map, rule, scale
        self.nu, self.m, self.redraw = nu, m, redraw
        self.omega_draw, self.feature_eps = omega_draw, feature_eps
        self.normalization = norm.names[0] if len(norm.names) == 1 else norm.names or "none"
        self.eps, self.sum_eps, self.denominator_write = norm.write_eps, norm.sum_eps, denominator_write
        self.backend = backend
        if chunk_size is None:
            chunk_size = default_chunk_size(rule, decay, self.phi.d_dot, d_head)
        self.chunk_size = chunk_size
        self.uses_beta = RULES[rule].uses_beta
        self.short_conv, self.output_gate, self.decay = short_conv, output_gate, decay
        self.allow_negative_eigenvalues = allow_negative_eigenvalues
        self.beta_scale = 2.0 if allow_negative_eigenvalues else 1.0
        order = [f"the {rule} rule's memory depends on the order of the writes"] * (
            not RULES[rule].order_free
        )
        order += ["the decay orders the writes, shrinking only earlier ones"] * decay
        if order:
            self.refused_modes = {"bidirectional": "; ".join(order)}
        self.register_load_state_dict_pre_hook(moved_omega)

    @staticmethod
    def unused_options(options: dict[str, Any]) -> dict[str, str]:
        """The options in ``options`` (this class's keyword options) that the system they describe does
        not use, each with the reason (the registry refuses those a user gives and drops a preset's)."""
        feature_map = options.get("feature_map", "dpfp")
        if feature_map not in FEATURE_MAPS:
            return {}
        takes = FEATURE_MAPS[feature_map].options
        reason = f"feature_map={feature_map!r} takes {list(takes) if takes else 'no options'}"
        return {option: reason for option in FEATURE_MAP_OPTIONS if option in options and option not in takes}

    def extra_repr(self) -> str:
        return (
            f"d_head={self.d_head}, feature_map={self.feature_map!r}, normalization={self.normalization!r}, "
            f"rule={self.rule!r}, eps={self.eps}, sum_eps={self.sum_eps}, scale={self.scale!r}, "
            f"{'denominator_write=True, ' if self.denominator_write else ''}backend={self.backend!r}"
            + "".join(
                f", {name}={value!r}"
                for name, value in (
                    ("short_conv", self.short_conv),
                    ("output_gate", self.output_gate),
                    ("decay", self.decay),
                    ("allow_negative_eigenvalues", self.allow_negative_eigenvalues),
                )
                if value
            )
        )

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor | None = None,
        *,
        causal: bool = True,
        state: FastWeightState | None = None,
        key_padding_mask: Tensor | None = None,
        log_decay: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        query_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, FastWeightState]:
        """q, k, v ``[B, H, T, d_head]``, beta ``[B, H, T]`` (delta rule), key_padding_mask ``[B, T]``
        (padded keys write nothing), log_decay ``[B, H, T]`` (required with ``decay``) → y
        ``[B, H, T, d_head]`` and the memory after the sequence. Packed sequences (``cu_seqlens``,
        ``query_cu_seqlens``: ``fwp.attention.base``) go to ``fwp.ops.fast_weight_attention``, which
        keeps one memory per sequence.

        Causal: the recurrence continues ``state``. Bidirectional (sum rule only): every query reads
        the memory written by ``state`` (if any) plus all keys of the call. A call without ``state``
        starts a sequence (FAVOR+ may redraw Ω).
        """
        self.require_layer()
        mode = "causal" if causal else "bidirectional"
        if self.decay and not causal:
            raise ValueError(f"causal=False is refused: {self.refused_modes['bidirectional']}")
        if self.decay and log_decay is None:
            raise ValueError("this layer has decay=True: give log_decay [B, H, T] (MultiHeadAttention does)")
        return fast_weight_attention(
            q,
            k,
            v,
            beta,
            log_decay=log_decay,
            mode=mode,
            state=state,
            key_padding_mask=key_padding_mask,
            cu_seqlens=cu_seqlens,
            query_cu_seqlens=query_cu_seqlens,
            **self.layer_options,
        )

    def read(self, q: Tensor, state: FastWeightState) -> Tensor:
        """``y = φ(q) W`` (÷ ``φ(q)·z + ε`` with a denominator) without writing: ``[B, H, T_q, d_head]``
        in ``q``'s dtype. Never redraws ``Ω``."""
        return fast_weight_attention(q, mode="read", state=state, **self.layer_options)[0]

    @property
    def layer_options(self) -> dict[str, Any]:
        """What this layer passes to every ``fwp.ops.fast_weight_attention`` call."""
        return {
            "feature_map": self.phi,
            "rule": self.rule,
            "normalization": self.normalization_spec,
            "backend": self.backend,
            "chunk_size": self.chunk_size,
        }
