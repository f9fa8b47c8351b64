"""Operations on the per-layer states a model returns (fast weights, key/value caches).

A model's states form a list with one entry per layer; an entry is an ``AttentionState``, ``None``,
or a tuple of them (a decoder layer with cross-attention carries ``(self_state, cross_state)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from fwp.attention import AttentionState


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
