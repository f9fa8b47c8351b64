"""The update rules of the fast-weight recurrence, as a table (docs/design.md §1).

Per head, with row vectors, ``W``: ``[d_dot, d_v]`` and feature-mapped keys ``k_t = φ(k_t)``:

- ``sum``:   ``W_t = W_{t-1} + k_tᵀ v_t``
- ``delta``: ``W_t = W_{t-1} + β_t k_tᵀ (v_t − k_t W_{t-1})``

A rule's entry says what the entry point (``fwp.ops.fast_weight_attention``) must check and may offer:
whether it consumes the write strength β, and whether its final memory is independent of the order
of the writes (only then is there a bidirectional form: every query reads the memory of all keys).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One update rule: ``uses_beta`` — needs β ``[B, H, T]``; ``order_free`` — ``W_T`` does not depend on
    the order of the writes, so the rule also runs bidirectionally (and as cross-attention)."""

    name: str
    uses_beta: bool
    order_free: bool


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("sum", uses_beta=False, order_free=True),
        Rule("delta", uses_beta=True, order_free=False),
    )
}
"""Every rule every backend implements, by name."""


def get_rule(name: str) -> Rule:
    """The rule ``name``; a ValueError listing the known ones otherwise."""
    if name not in RULES:
        raise ValueError(f"rule must be one of {tuple(RULES)}, got rule={name!r}")
    return RULES[name]
