"""Operations on the per-layer states a model returns (fast weights, key/value caches).

A model's states form a list with one entry per layer; an entry is an ``AttentionState``, ``None``,
or a tuple of them (a decoder layer with cross-attention carries ``(self_state, cross_state)``).
Tasks treat states as opaque: they carry, detach, reorder, save and restore them with the functions
here, and never build or read a ``FastWeightState`` themselves.

Saved form of the fast-weight states of a stack (``export_fast_weights``, e.g. for a checkpoint):
``{"W": [W_l], "z": [z_l or None]}`` over the layers ``l``, ``W_l`` ``[B, H, d_dot, d_v]`` and
``z_l`` ``[B, H, d_dot]`` (the running key sum of the denominator, None without it), and ``"conv"``:
``[conv_l or None]``, the short convolution's last inputs ``[B, K − 1, C]`` (DeltaNet layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from fwp.attention import AttentionState
from fwp.ops import FastWeightState


class CrossBlockState(NamedTuple):
    """The state of a block with cross-attention: its self-attention state (fast weights or a growing
    key/value cache) and its cross-attention state (the encoder memory's keys, written once)."""

    self_state: AttentionState | None
    cross_state: AttentionState | None


def map_states(states: Any, function: Callable[[AttentionState], AttentionState]) -> Any:
    """``function`` applied to every state in a (nested) list/tuple of states; ``None`` stays ``None``."""
    if states is None:
        return None
    if isinstance(states, tuple) and hasattr(states, "_fields"):
        return type(states)(*(map_states(state, function) for state in states))
    if isinstance(states, list | tuple):
        return type(states)(map_states(state, function) for state in states)
    return function(states)


def reorder_states(states: list, index: Tensor) -> list:
    """Every state with its batch rows selected by ``index`` ``[B']`` (reorder or repeat, beam search)."""
    return map_states(states, lambda state: state.index_select(index))


def detach_states(states: list) -> list:
    """Every state cut from the autograd graph (carrying memory across training segments)."""
    return map_states(states, lambda state: state.detach())


def keep(tensor: Tensor) -> Tensor:
    """The identity (the default ``transform`` of the export and import below)."""
    return tensor


def export_fast_weights(
    states: list, transform: Callable[[Tensor], Tensor] = keep
) -> dict[str, list[Tensor | None]]:
    """Fast-weight states (one per layer) in the saved form of the module docstring, each tensor
    passed through ``transform`` (e.g. gathering every rank's rows). A ``TypeError`` for any other
    state (a key/value cache has no fixed size to save)."""
    for layer, state in enumerate(states):
        if not isinstance(state, FastWeightState):
            raise TypeError(f"layer {layer}'s state is a {type(state).__name__}, not fast weights")
    return {
        "W": [transform(state.W) for state in states],
        "z": [None if state.z is None else transform(state.z) for state in states],
        "conv": [None if state.conv is None else transform(state.conv) for state in states],
    }


def import_fast_weights(
    saved: dict[str, list[Tensor | None]], transform: Callable[[Tensor], Tensor] = keep
) -> list[FastWeightState]:
    """The states saved by ``export_fast_weights``, each tensor passed through ``transform`` (e.g.
    selecting this rank's rows and moving them to its device)."""
    convs = saved.get("conv") or [None] * len(saved["W"])  # saved before layers had a convolution
    return [
        FastWeightState(
            transform(W), None if z is None else transform(z), None if c is None else transform(c)
        )
        for W, z, c in zip(saved["W"], saved["z"], convs, strict=True)
    ]


def saved_state_shape(saved: dict[str, list[Tensor | None]]) -> tuple[int, ...]:
    """The shape ``(B, H, d_dot, d_v)`` of the first layer's ``W`` in a saved form."""
    return tuple(saved["W"][0].shape)


def fast_weight_norm(state: AttentionState | None) -> Tensor | None:
    """The mean over the batch of the Frobenius norm of every head's fast weights together
    (``‖W_b‖_F`` over ``[H, d_dot, d_v]``), detached; None for a state that is not fast weights."""
    if not isinstance(state, FastWeightState):
        return None
    return state.W.detach().flatten(1).norm(dim=1).mean()
