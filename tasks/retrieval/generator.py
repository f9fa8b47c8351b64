"""Sequences of key/value associations for the retrieval task (Schlag et al. 2021, §6.1).

A sequence is ``L`` pairs ``(key_t, value_t)`` over ``S`` keys and ``S`` values, followed by query keys.
The target of a query key is the value *last* paired with it in the sequence.

- Setting 1 (capacity): ``L = S``; keys drawn without replacement, so every key occurs once.
- Setting 2 (update): ``L = 2S``; keys and values drawn with replacement, so earlier associations of a
  key must be overwritten by later ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SETTINGS = (1, 2)


@dataclass
class RetrievalBatch:
    """keys, values: ``[B, L]``; queries, targets, query_mask: ``[B, Q]``.

    ``query_mask`` is True where the query is valid (its key occurs in the sequence).
    """

    keys: Tensor
    values: Tensor
    queries: Tensor
    targets: Tensor
    query_mask: Tensor


def sequence_length(num_keys: int, setting: int) -> int:
    """``L = S`` in setting 1, ``L = 2S`` in setting 2."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got setting={setting}")
    return num_keys * setting


def draw_pairs(
    num_keys: int, setting: int, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Keys and values ``[B, L]`` of one batch of sequences."""
    length = sequence_length(num_keys, setting)
    if setting == 1:
        keys = torch.argsort(torch.rand(batch_size, num_keys, generator=generator), dim=1)
    else:
        keys = torch.randint(num_keys, (batch_size, length), generator=generator)
    values = torch.randint(num_keys, (batch_size, length), generator=generator)
    return keys, values


def last_values(keys: Tensor, values: Tensor, num_keys: int) -> tuple[Tensor, Tensor]:
    """For every key id, the value last paired with it: ``[B, S]``, and whether it occurs: ``[B, S]``."""
    batch, length = keys.shape
    positions = torch.arange(length).expand(batch, length)
    last_position = torch.full((batch, num_keys), -1, dtype=torch.long)
    last_position.scatter_reduce_(1, keys, positions, reduce="amax")
    present = last_position >= 0
    table = values.gather(1, last_position.clamp(min=0))
    return table, present


def make_batch(
    num_keys: int, setting: int, batch_size: int, generator: torch.Generator, *, all_queries: bool
) -> RetrievalBatch:
    """A batch of sequences with either every present key queried (evaluation: ``Q = S``) or one
    query per sequence drawn uniformly from the keys that occur (training: ``Q = 1``)."""
    keys, values = draw_pairs(num_keys, setting, batch_size, generator)
    table, present = last_values(keys, values, num_keys)
    if all_queries:
        queries = torch.arange(num_keys).expand(batch_size, num_keys).clone()
        return RetrievalBatch(keys, values, queries, table, present)
    queries = torch.multinomial(present.to(torch.float32), 1, generator=generator)
    targets = table.gather(1, queries)
    return RetrievalBatch(keys, values, queries, targets, torch.ones_like(queries, dtype=torch.bool))
