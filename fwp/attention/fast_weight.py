"""Fast-weight attention: any feature map × normalisation × update rule of DESIGN.md §1.

Per head, ``φ`` maps keys and queries ``[B, H, T, d_head]`` to ``[B, H, T, d_dot]`` (then, with the
``sum`` normalisation, ``φ ← φ / (Σ_j φ_j + ε)``); the fast weight ``W`` ``[B, H, d_dot, d_head]`` is
written with the sum rule ``W += φ(k)^T v`` or the delta rule ``W += β φ(k)^T (v − φ(k) W)`` and read
``y = φ(q) W`` (÷ ``φ(q)·z + ε`` with the ``denominator`` normalisation, ``z = Σ φ(k)``).

With ``denominator_write`` (delta rule + denominator) the delta rule's retrieval is normalised like the
read, ``v̄ = φ(k) W / s`` with ``s_t = z_{t-1}·φ(k_t)``, and the write rescaled by ``s_t``:
``W_t = W_{t-1} + β_t φ(k_t)^T (s_t v_t − φ(k_t) W_{t-1})``, i.e. the delta rule on the values ``s_t v_t``
(``z_0 = 0``: the first key of a sequence writes nothing).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fwp.attention.base import AttentionCore
from fwp.ops import (
    BACKENDS,
    FastWeightState,
    dpfp,
    elu_plus_one,
    fast_weight_recurrence,
    favor,
    identity,
    orthogonal_random_projection,
    read_memory,
    sum_normalize,
    sum_rule_memory,
)
from fwp.ops.dispatch import compute_dtype
from fwp.ops.validation import validate_state

FeatureMap = Literal["identity", "elu", "dpfp", "favor"]
Normalization = Literal["sum", "denominator", "none"]
Rule = Literal["sum", "delta"]
Redraw = Literal["train", "always", "never"]

FEATURE_MAPS = ("identity", "elu", "dpfp", "favor")
NORMALIZATIONS = ("sum", "denominator", "none")
RULES = ("sum", "delta")
REDRAW_POLICIES = ("train", "always", "never")


def _require_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {list(choices)}, got {option}={value!r}")


def _require_at_least(option: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {option}={value}")


class FastWeightAttention(AttentionCore):
    """A fast weight programmer layer over projected heads; the defaults are the paper's delta preset.

    Options:
    - ``feature_map``: ``identity``, ``elu`` (elu + 1), ``dpfp`` (order ``nu``), ``favor`` (``m`` random
      features, ``feature_eps`` added to every feature).
    - ``redraw`` (favor's ``Ω``, a persistent buffer ``[m, d_head]``, redrawn only at the start of a
      sequence, i.e. a ``forward`` without state): ``train`` — while training, frozen in eval;
      ``always`` — eval included; ``never``.
    - ``normalization``: ``sum`` (of φ(k) and φ(q)), ``denominator`` (Katharopoulos) or ``none``.
    - ``rule``: ``sum`` or ``delta`` (needs β; causal only).
    - ``eps``: the ε of whichever normalisation is on (sum: ``Σ_j φ_j + ε``; denominator: ``φ(q)·z + ε``).
    - ``denominator_write``: with ``rule='delta'`` and ``normalization='denominator'`` only, rescale
      each write by ``z_{t-1}·φ(k_t)`` (module docstring), the variant that keeps the denominator
      alongside the delta rule.
    - ``backend``, ``chunk_size``: passed to ``fwp.ops.fast_weight_recurrence``.

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
        feature_eps: float = 0.0,
        normalization: Normalization = "sum",
        rule: Rule = "delta",
        eps: float = 1e-6,
        denominator_write: bool = False,
        backend: str = "auto",
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_head)
        _require_choice("feature_map", feature_map, FEATURE_MAPS)
        _require_choice("normalization", normalization, NORMALIZATIONS)
        _require_choice("rule", rule, RULES)
        _require_choice("redraw", redraw, REDRAW_POLICIES)
        _require_choice("backend", backend, ("auto", *BACKENDS))
        _require_at_least("nu", nu, 1)
        _require_at_least("m", m, 1)
        _require_at_least("chunk_size", chunk_size, 1)
        _require_at_least("eps", eps, 0.0)
        _require_at_least("feature_eps", feature_eps, 0.0)
        if denominator_write and (rule, normalization) != ("delta", "denominator"):
            raise ValueError(
                "denominator_write=True needs rule='delta' and normalization='denominator', got "
                f"rule={rule!r}, normalization={normalization!r}"
            )
        self.feature_map = feature_map
        self.nu = nu
        self.m = m
        self.redraw = redraw
        self.feature_eps = feature_eps
        self.normalization = normalization
        self.rule = rule
        self.eps = eps
        self.denominator_write = denominator_write
        self.backend = backend
        self.chunk_size = chunk_size
        self.uses_beta = rule == "delta"
        self.supports_bidirectional = rule == "sum"
        if feature_map == "favor":
            self.register_buffer("omega", orthogonal_random_projection(m, d_head), persistent=True)

    def extra_repr(self) -> str:
        features = {"dpfp": f"nu={self.nu}, ", "favor": f"m={self.m}, redraw={self.redraw!r}, "}
        return (
            f"d_head={self.d_head}, feature_map={self.feature_map!r}, {features.get(self.feature_map, '')}"
            f"normalization={self.normalization!r}, rule={self.rule!r}, eps={self.eps}, "
            f"{'denominator_write=True, ' if self.denominator_write else ''}"
            f"backend={self.backend!r}"
        )

    @property
    def denominator(self) -> bool:
        return self.normalization == "denominator"

    def redraw_projection(self) -> None:
        """Draw a new FAVOR+ ``Ω`` from the global RNG, in place (the buffer keeps device and dtype)."""
        omega = orthogonal_random_projection(self.m, self.d_head)
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
            if self.normalization == "sum":
                phi = sum_normalize(phi, self.eps)
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
            return read_memory(phi_q, memory, eps=self.eps).to(v.dtype), memory
        if key_padding_mask is not None:
            keep = (~key_padding_mask)[:, None, :]
            phi_k = phi_k * keep.unsqueeze(-1).to(phi_k.dtype)
            beta = None if beta is None else beta * keep.to(beta.dtype)
        values = denominator_scaled_values(phi_k, v, state) if self.denominator_write else v
        y, state = fast_weight_recurrence(
            phi_q,
            phi_k,
            values,
            beta,
            rule=self.rule,
            denominator=self.denominator,
            eps=self.eps,
            initial_state=state,
            backend=self.backend,
            chunk_size=self.chunk_size,
        )
        return y.to(v.dtype), state

    def read(self, q: Tensor, state: FastWeightState) -> Tensor:
        """``y = φ(q) W`` (÷ ``φ(q)·z + ε`` with a denominator) without writing: ``[B, H, T_q, d_head]``
        in ``q``'s dtype. Never redraws ``Ω``."""
        phi_q = self.features(q)
        self.check_state(phi_q, state.W.shape[-1], state)
        return read_memory(phi_q, state, eps=self.eps).to(q.dtype)

    def check_state(self, phi_q: Tensor, d_v: int, state: FastWeightState) -> None:
        """A ValueError naming the state's field unless ``state`` fits this layer: ``W`` ``[B, H, d_dot,
        d_v]`` for features ``phi_q`` ``[B, H, T, d_dot]``, and ``z`` present if and only if the layer
        uses the denominator."""
        B, H, _, d_dot = phi_q.shape
        validate_state(state, B, H, d_dot, d_v, denominator=self.denominator)


def denominator_scaled_values(phi_k: Tensor, v: Tensor, state: FastWeightState | None) -> Tensor:
    """``s_t v_t`` with ``s_t = z_{t-1}·φ(k_t)``, ``z_{t-1} = z_0 + Σ_{j<t} φ(k_j)`` (``z_0`` from
    ``state``, else 0): the values of ``denominator_write``. phi_k ``[B, H, T, d_dot]`` (compute dtype),
    v ``[B, H, T, d_head]`` → ``[B, H, T, d_head]`` in the compute dtype."""
    previous = F.pad(torch.cumsum(phi_k, dim=2)[:, :, :-1], (0, 0, 1, 0))
    if state is not None and state.z is not None:
        previous = previous + state.z.unsqueeze(2).to(phi_k.dtype)
    return (previous * phi_k).sum(dim=-1, keepdim=True) * v.to(phi_k.dtype)
