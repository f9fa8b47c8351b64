"""Fast-weight attention: any feature map × normalisation × update rule of docs/attention.md.

Per head, ``φ`` maps keys and queries ``[B, H, T, d_head]`` to ``[B, H, T, d_dot]`` (then, with the
``sum`` normalisation, ``φ ← φ / (Σ_j φ_j + ε_sum)``); the fast weight ``W`` ``[B, H, d_dot, d_head]`` is
written with the sum rule ``W += φ(k)^T v`` or the delta rule ``W += β φ(k)^T (v − φ(k) W)`` and read
``y = φ(q) W`` (÷ ``φ(q)·z + ε`` with the ``denominator`` normalisation, ``z = Σ φ(k)``). Both
normalisations may be on at once (the paper's language-model delta layers).

With ``denominator_write`` (delta rule + denominator; the official LM layers 44–46) the write is
normalised by ``s_t = z_{t-1}·φ(k_t)`` (``s_1 := 1`` at the start of a sequence without a carried
state): the delta rule runs on the key ``k̃_t = φ(k_t) / (s_t + ε)`` with the write strength
``β_t s_t``, ``W_t = W_{t-1} + β_t s_t k̃_t^T (v_t − k̃_t W_{t-1})``, while ``z`` and the read keep the
plain ``φ(k)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from fwp.attention.base import AttentionCore
from fwp.ops import (
    BACKENDS,
    FastWeightState,
    causal_denominator,
    dpfp,
    elu_plus_one,
    fast_weight_recurrence,
    favor,
    identity,
    orthogonal_random_projection,
    read_memory,
    sum_normalize,
    sum_rule_memory,
    transposed_orthogonal_projection,
)
from fwp.ops.dispatch import compute_dtype, require_backend_usable
from fwp.ops.validation import validate_state

FeatureMap = Literal["identity", "elu", "dpfp", "favor"]
Normalization = Literal["sum", "denominator", "none"]
Rule = Literal["sum", "delta"]
Redraw = Literal["train", "always", "never"]
Scale = Literal["output", "scores"]
OmegaDraw = Literal["orthogonal", "transposed"]

FEATURE_MAPS = ("identity", "elu", "dpfp", "favor")
NORMALIZATIONS = ("sum", "denominator", "none")
RULES = ("sum", "delta")
REDRAW_POLICIES = ("train", "always", "never")
SCALES = ("output", "scores")
OMEGA_DRAWS = {"orthogonal": orthogonal_random_projection, "transposed": transposed_orthogonal_projection}
DEFAULT_EPS = 1e-6


def parse_normalization(value: object) -> tuple[str, ...]:
    """The normalisations switched on by ``value``, in the order ``("sum", "denominator")``.

    ``"sum"``, ``"denominator"``, ``"none"`` (nothing), or a list of ``sum`` and ``denominator``
    (``[sum, denominator]``: both, as in the paper's language-model delta layers; ``[]``: nothing).
    """
    names = [value] if isinstance(value, str) else value
    valid = isinstance(names, Sequence) and all(name in NORMALIZATIONS for name in names)
    if valid and len(names) > 1:
        valid = "none" not in names and len(set(names)) == len(names)
    if not valid:
        raise ValueError(
            "normalization must be one of 'sum', 'denominator', 'none' or a list of 'sum' and "
            f"'denominator' (both on: [sum, denominator]), got normalization={value!r}"
        )
    return tuple(name for name in ("sum", "denominator") if name in names)


def _require_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {option}={value!r}")


def _epsilon(option: str, value: float | None, used: bool, normalization: object) -> float:
    """``value`` (default 1e-6) of the ε option ``option``; a ValueError if it is negative, or given
    while its normalisation is off (it would be ignored)."""
    if value is None:
        return DEFAULT_EPS
    if not used:
        owner = "denominator" if option == "eps" else "sum"
        raise ValueError(
            f"{option} is the ε of the {owner} normalisation, which is off (normalization="
            f"{normalization!r}); got {option}={value}"
        )
    _require_at_least(option, value, 0.0)
    return value


def _require_at_least(option: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {option}={value}")


class FastWeightAttention(AttentionCore):
    """A fast weight programmer layer over projected heads; the defaults are the paper's delta preset.

    Options:
    - ``feature_map``: ``identity``, ``elu`` (elu + 1), ``dpfp`` (order ``nu``), ``favor`` (``m`` random
      features, ``feature_eps`` added to every feature before the 1/√(2m) scaling).
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
    - ``backend``, ``chunk_size``: passed to ``fwp.ops.fast_weight_recurrence``; ``triton`` needs CUDA.

    The output is in ``v``'s dtype; the state is a ``FastWeightState`` in the compute dtype.
    """

    is_fast_weight = True

    def __init__(
        self,
        d_head: int,
        *,
        feature_map: FeatureMap = "dpfp",
        nu: int = 2,
        m: int = 16,
        redraw: Redraw = "train",
        omega_draw: OmegaDraw = "orthogonal",
        feature_eps: float = 0.0,
        normalization: Normalization | list[Normalization] = "sum",
        rule: Rule = "delta",
        eps: float | None = None,
        sum_eps: float | None = None,
        scale: Scale = "output",
        denominator_write: bool = False,
        backend: str = "auto",
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_head)
        _require_choice("feature_map", feature_map, FEATURE_MAPS)
        normalizations = parse_normalization(normalization)
        _require_choice("rule", rule, RULES)
        _require_choice("redraw", redraw, REDRAW_POLICIES)
        _require_choice("omega_draw", omega_draw, tuple(OMEGA_DRAWS))
        _require_choice("scale", scale, SCALES)
        _require_choice("backend", backend, ("auto", *BACKENDS))
        require_backend_usable(backend)
        _require_at_least("nu", nu, 1)
        _require_at_least("m", m, 1)
        _require_at_least("chunk_size", chunk_size, 1)
        eps = _epsilon("eps", eps, "denominator" in normalizations, normalization)
        sum_eps = _epsilon("sum_eps", sum_eps, "sum" in normalizations, normalization)
        _require_at_least("feature_eps", feature_eps, 0.0)
        if denominator_write and (rule != "delta" or "denominator" not in normalizations):
            raise ValueError(
                "denominator_write=True needs rule='delta' and the denominator normalisation, got "
                f"rule={rule!r}, normalization={normalization!r}"
            )
        self.feature_map = feature_map
        self.nu = nu
        self.m = m
        self.redraw = redraw
        self.omega_draw = omega_draw
        self.feature_eps = feature_eps
        self.normalization = normalizations[0] if len(normalizations) == 1 else list(normalizations) or "none"
        self.sum_normalized = "sum" in normalizations
        self.denominator = "denominator" in normalizations
        self.rule = rule
        self.eps = eps
        self.sum_eps = sum_eps
        self.scale = scale
        self.denominator_write = denominator_write
        self.backend = backend
        self.chunk_size = chunk_size
        self.uses_beta = rule == "delta"
        self.supports_bidirectional = rule == "sum"
        scores_scaled = scale == "scores" and self.denominator
        self.output_scale = 1.0 if scores_scaled else 1.0 / math.sqrt(d_head)
        self.denominator_eps = eps * math.sqrt(d_head) if scores_scaled else eps
        if feature_map == "favor":
            self.register_buffer("omega", OMEGA_DRAWS[omega_draw](m, d_head), persistent=True)

    def extra_repr(self) -> str:
        favor = f"m={self.m}, redraw={self.redraw!r}, omega_draw={self.omega_draw!r}, "
        features = {"dpfp": f"nu={self.nu}, ", "favor": favor}
        return (
            f"d_head={self.d_head}, feature_map={self.feature_map!r}, {features.get(self.feature_map, '')}"
            f"normalization={self.normalization!r}, rule={self.rule!r}, eps={self.eps}, "
            f"sum_eps={self.sum_eps}, scale={self.scale!r}, "
            f"{'denominator_write=True, ' if self.denominator_write else ''}"
            f"backend={self.backend!r}"
        )

    def redraw_projection(self) -> None:
        """Draw a new FAVOR+ ``Ω`` from the global RNG, in place (the buffer keeps device and dtype)."""
        omega = OMEGA_DRAWS[self.omega_draw](self.m, self.d_head)
        self.omega.copy_(omega.to(device=self.omega.device, dtype=self.omega.dtype))

    def start_sequence(self) -> None:
        """Apply the redraw policy: called when a sequence starts (``forward`` without a state)."""
        if self.feature_map == "favor" and (
            self.redraw == "always" or (self.redraw == "train" and self.training)
        ):
            self.redraw_projection()

    def features(self, x: Tensor) -> Tensor:
        """``φ(x)`` (sum-normalised if so configured): ``[B, H, T, d_head]`` → ``[B, H, T, d_dot]``, in the
        compute dtype (float32, or float64 for float64 input) with autocast off."""
        x = x.to(compute_dtype(x))
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.feature_map == "favor":
                phi = favor(x, self.omega, self.feature_eps)
            elif self.feature_map == "dpfp":
                phi = dpfp(x, self.nu)
            elif self.feature_map == "elu":
                phi = elu_plus_one(x)
            else:
                phi = identity(x)
            if self.sum_normalized:
                phi = sum_normalize(phi, self.sum_eps)
        return phi

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
    ) -> tuple[Tensor, FastWeightState]:
        """q, k, v ``[B, H, T, d_head]``, beta ``[B, H, T]`` (delta rule), key_padding_mask ``[B, T]``
        (padded keys write nothing) → y ``[B, H, T, d_head]`` and the memory after the sequence.

        Causal: the recurrence continues ``state``. Bidirectional (sum rule only): every query reads
        the memory written by ``state`` (if any) plus all keys of the call.
        """
        if self.rule == "delta" and beta is None:
            raise ValueError("FastWeightAttention(rule='delta') requires beta of shape [B, H, T], got None")
        if not causal and not self.supports_bidirectional:
            raise ValueError(f"causal=False needs the sum rule, got rule={self.rule!r}")
        if state is None:
            self.start_sequence()
        phi_q, phi_k = self.features(q), self.features(k)
        if not causal:
            if state is not None:  # the causal path's recurrence validates its state itself
                self.check_state(phi_q, v.shape[-1], state)
            memory = sum_rule_memory(
                phi_k, v, denominator=self.denominator, key_padding_mask=key_padding_mask
            )
            if state is not None:
                memory = FastWeightState(memory.W + state.W, None if memory.z is None else memory.z + state.z)
            return read_memory(phi_q, memory, eps=self.denominator_eps).to(v.dtype), memory
        if key_padding_mask is not None:
            keep = (~key_padding_mask)[:, None, :]
            phi_k = phi_k * keep.unsqueeze(-1).to(phi_k.dtype)
            beta = None if beta is None else beta * keep.to(beta.dtype)
        if self.denominator_write:
            y, state = self.normalized_write_recurrence(phi_q, phi_k, v, beta, state, key_padding_mask)
        else:
            y, state = fast_weight_recurrence(
                phi_q,
                phi_k,
                v,
                beta,
                rule=self.rule,
                denominator=self.denominator,
                eps=self.denominator_eps,
                initial_state=state,
                backend=self.backend,
                chunk_size=self.chunk_size,
            )
        return y.to(v.dtype), state

    def normalized_write_recurrence(
        self,
        phi_q: Tensor,
        phi_k: Tensor,
        v: Tensor,
        beta: Tensor,
        state: FastWeightState | None,
        key_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, FastWeightState]:
        """``denominator_write``: the delta rule on ``φ(k_t)/(s_t + ε)`` with strength ``β_t s_t``,
        ``s_t = z_{t-1}·φ(k_t)`` (``s := 1`` at the first unpadded position without a carried state),
        read ÷ ``φ(q_t)·z_t + ε``. phi_q, phi_k ``[B, H, T, d_dot]`` (compute dtype; padded keys zero),
        v ``[B, H, T, d_v]``, beta ``[B, H, T]``, key_padding_mask ``[B, T]`` → y ``[B, H, T, d_v]``
        (compute dtype) and the state ``(W_T, z_T)``."""
        if state is not None:
            self.check_state(phi_q, v.shape[-1], state)
        z0 = None if state is None else state.z.to(phi_k.dtype)
        previous = torch.cumsum(phi_k, dim=2) - phi_k
        if z0 is not None:
            previous = previous + z0.unsqueeze(2)
        strength = (previous * phi_k).sum(dim=-1)
        if state is None:
            keep = torch.ones_like(strength[:, 0], dtype=torch.bool)
            if key_padding_mask is not None:
                keep = ~key_padding_mask
            first = (keep & (torch.cumsum(keep.long(), dim=-1) == 1))[:, None, :]
            strength = torch.where(first, torch.ones_like(strength), strength)
        keys = phi_k / (strength.unsqueeze(-1) + self.eps)
        y, written = fast_weight_recurrence(
            phi_q,
            keys,
            v,
            beta.to(strength.dtype) * strength,
            rule="delta",
            initial_state=None if state is None else FastWeightState(state.W, None),
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        den, z = causal_denominator(phi_q, phi_k, z0)
        y = y.to(den.dtype) / (den.unsqueeze(-1) + self.denominator_eps)
        return y, FastWeightState(written.W, z)

    def read(self, q: Tensor, state: FastWeightState) -> Tensor:
        """``y = φ(q) W`` (÷ ``φ(q)·z + ε`` with a denominator) without writing: ``[B, H, T_q, d_head]``
        in ``q``'s dtype. Never redraws ``Ω``."""
        phi_q = self.features(q)
        self.check_state(phi_q, state.W.shape[-1], state)
        return read_memory(phi_q, state, eps=self.denominator_eps).to(q.dtype)

    def check_state(self, phi_q: Tensor, d_v: int, state: FastWeightState) -> None:
        """A ValueError naming the state's field unless ``state`` fits this layer: ``W`` ``[B, H, d_dot,
        d_v]`` for features ``phi_q`` ``[B, H, T, d_dot]``, and ``z`` present if and only if the layer
        uses the denominator."""
        B, H, _, d_dot = phi_q.shape
        validate_state(state, B, H, d_dot, d_v, denominator=self.denominator)
