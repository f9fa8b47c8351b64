"""Fast Weight Memory attention: the FWM update rule (``fwp.ops.fwm``) behind the ``AttentionCore``
interface, for the retrieval task's update setting (Schlag et al. 2021, Figure 3); registered as ``fwm``.

``φ`` is ``tanh`` (the FWM paper's choice) or DPFP of order ``nu`` (the official code also ran FWM with
DPFP features), a ``fwp.ops.FeatureMap``; keys are not normalised; the write strength β comes from the
module (sigmoid); a query reads ``LayerNorm(φ(q) W)``. Causal and read modes only (``refused_modes``);
parallel and step mode run the same recurrence.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fwp.attention.base import AttentionCore
from fwp.ops import FastWeightState, build_feature_map
from fwp.ops.dispatch import compute_dtype
from fwp.ops.fwm import fwm_read, fwm_recurrence
from fwp.ops.validation import require_at_least, require_choice, validate_state

FWM_FEATURE_MAPS = ("tanh", "dpfp")


class FastWeightMemoryAttention(AttentionCore):
    """The FWM rule: ``W ← W + β φ(k)^T (v − φ(k) W)``, then ``W ← W / max(1, ‖W‖_F)`` (not after a
    sequence's first write); read ``LayerNorm(φ(q) W)``.

    Options: ``feature_map`` (``tanh`` or ``dpfp``), ``nu`` (DPFP order).
    State: a ``FastWeightState`` without ``z``, ``W`` ``[B, H, d_dot, d_v]`` in the compute dtype.
    """

    is_fast_weight = True
    uses_beta = True
    refused_modes = {  # noqa: RUF012  (read-only)
        "bidirectional": "the FWM rule rescales W after every write, so its memory depends on their order"
    }
    rule = "fwm"

    def __init__(self, d_head: int, *, feature_map: Literal["tanh", "dpfp"] = "tanh", nu: int = 1) -> None:
        super().__init__(d_head)
        require_choice("feature_map", feature_map, FWM_FEATURE_MAPS)
        require_at_least("nu", nu, 1)
        self.phi = build_feature_map(feature_map, d_head, **({"nu": nu} if feature_map == "dpfp" else {}))
        self.feature_map, self.nu = feature_map, nu

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, feature_map={self.feature_map!r}, rule='fwm'"

    def features(self, x: Tensor) -> Tensor:
        """``φ(x)``: ``[B, H, T, d_head]`` → ``[B, H, T, d_dot]`` in the compute dtype, autocast off."""
        x = x.to(compute_dtype(x))
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.phi(x)

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
        cu_seqlens: Tensor | None = None,
        query_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, FastWeightState]:
        """q, k, v ``[B, H, T, d_head]``, beta ``[B, H, T]`` → y ``[B, H, T, d_v]`` (each position reads
        after its write) and the memory; padded keys (``key_padding_mask`` True) write nothing. Packed
        sequences (``cu_seqlens``) run as a padded batch (``attend_padded``; ``fwp.ops.fwm`` has no
        packed form), the state holding ``N`` memories."""
        if beta is None:
            raise ValueError("FastWeightMemoryAttention requires beta of shape [B, H, T], got None")
        if not causal:
            self.require_mode("bidirectional", "causal=False")
        if cu_seqlens is not None or query_cu_seqlens is not None:
            return self.attend_padded(
                q,
                k,
                v,
                beta,
                cu_seqlens=cu_seqlens,
                query_cu_seqlens=query_cu_seqlens,
                key_padding_mask=key_padding_mask,
                state=state,
            )
        phi_q, phi_k = self.features(q), self.features(k)
        if state is not None:
            self.check_state(phi_k, v.shape[-1], state)
        keep = None if key_padding_mask is None else ~key_padding_mask
        with torch.autocast(device_type=phi_k.device.type, enabled=False):
            y, state = fwm_recurrence(
                phi_q, phi_k, v.to(phi_k.dtype), beta.to(phi_k.dtype), initial_state=state, write_mask=keep
            )
        return y.to(v.dtype), state

    def check_state(self, phi: Tensor, d_v: int, state: FastWeightState) -> None:
        """A ValueError naming the field unless ``state.W`` is ``[B, H, d_dot, d_v]`` for features ``phi``
        ``[B, H, T, d_dot]`` and ``state.z`` is None."""
        B, H, _, d_dot = phi.shape
        validate_state(state, B, H, d_dot, d_v, denominator=False)

    def read(self, q: Tensor, state: FastWeightState) -> Tensor:
        """``LayerNorm(φ(q) W)`` without writing: ``[B, H, T_q, d_v]`` in ``q``'s dtype."""
        phi_q = self.features(q)
        self.check_state(phi_q, state.W.shape[-1], state)
        with torch.autocast(device_type=phi_q.device.type, enabled=False):
            return fwm_read(phi_q, state.W.to(phi_q.dtype)).to(q.dtype)
