"""Sequences of key/value associations for the retrieval task (Schlag et al. 2021, §6.1), drawn as the
official code draws them (``synthetic/associativeRetrievalDataset.py`` of ischlag/fast-weight-transformers).

A sequence is ``L`` pairs ``(key_t, value_t)`` over ``S`` keys and ``S`` values, followed by query keys.
The target of a query key is the value *last* paired with it in the sequence.

- Setting 1 (capacity): ``L = S``; keys **and** values are permutations (drawn without replacement), so
  every key and every value occurs once.
- Setting 2 (update): keys and values drawn with replacement, so earlier associations of a key must be
  overwritten by later ones. Training sequences have ``L = 2S``; evaluation sequences ``L = S``.

Training: one query per sequence, drawn **by position** (a uniform position ``t``, query ``key_t``), so a
key that occurs often is queried more often. Evaluation: every distinct key present is queried, in key
order, at most ``max_queries`` (200) of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SETTINGS = (1, 2)
MAX_EVAL_QUERIES = 200


@dataclass
class RetrievalBatch:
    """keys, values: ``[B, L]``; queries, targets, query_mask, query_weight: ``[B, Q]``.

    ``query_mask`` is True where the query is scored (its key occurs in the sequence, within the query
    limit); ``query_weight`` is each query's weight in the batch loss (zero where masked; the loss is
    ``Σ w·loss / Σ w``).
    """

    keys: Tensor
    values: Tensor
    queries: Tensor
    targets: Tensor
    query_mask: Tensor
    query_weight: Tensor


def sequence_length(num_keys: int, setting: int, *, evaluation: bool = False) -> int:
    """``L = S`` in setting 1 and in every evaluation sequence; ``L = 2S`` in setting 2's training."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got setting={setting}")
    return num_keys if evaluation else num_keys * setting


def draw_symbols(num_keys: int, setting: int, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """``[B, L]`` symbols from ``range(S)``: permutations (``L = S``) in setting 1, with replacement in 2."""
    if setting == 1:
        return torch.argsort(torch.rand(shape, generator=generator), dim=1)
    return torch.randint(num_keys, shape, generator=generator)


def draw_pairs(
    num_keys: int, setting: int, batch_size: int, generator: torch.Generator, *, evaluation: bool = False
) -> tuple[Tensor, Tensor]:
    """Keys and values ``[B, L]`` of one batch of sequences."""
    shape = (batch_size, sequence_length(num_keys, setting, evaluation=evaluation))
    keys = draw_symbols(num_keys, setting, shape, generator)
    return keys, draw_symbols(num_keys, setting, shape, generator)


def last_values(keys: Tensor, values: Tensor, num_keys: int) -> tuple[Tensor, Tensor]:
    """For every key id, the value last paired with it: ``[B, S]``, and whether it occurs: ``[B, S]``."""
    batch, length = keys.shape
    positions = torch.arange(length).expand(batch, length)
    last_position = torch.full((batch, num_keys), -1, dtype=torch.long)
    last_position.scatter_reduce_(1, keys, positions, reduce="amax")
    present = last_position >= 0
    table = values.gather(1, last_position.clamp(min=0))
    return table, present


def chunked_mean_weights(mask: Tensor, chunk: int) -> Tensor:
    """Weights ``[B, Q]`` that turn a weighted sum of per-query losses into the official evaluation
    average: each sequence's scored queries (in order) are split into chunks of at most ``chunk``
    (the training batch size), each chunk's loss is a mean, and the result is the mean over all chunks
    of all sequences. A query in a chunk of size ``c`` weighs ``1 / (c · number of chunks)``."""
    rank = torch.cumsum(mask.long(), dim=1) - 1  # position of each scored query among its sequence's
    count = mask.long().sum(dim=1, keepdim=True)
    chunk_start = torch.div(rank, chunk, rounding_mode="floor") * chunk
    chunk_size = torch.minimum(count - chunk_start, torch.tensor(chunk)).clamp(min=1)
    num_chunks = torch.div(count + chunk - 1, chunk, rounding_mode="floor").sum().clamp(min=1)
    return torch.where(mask, 1.0 / (chunk_size * num_chunks).double(), 0.0).to(torch.float32)


def make_batch(
    num_keys: int,
    setting: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    all_queries: bool,
    max_queries: int = MAX_EVAL_QUERIES,
    chunk: int = 32,
) -> RetrievalBatch:
    """A training batch (``all_queries=False``: ``L`` as in training, one query per sequence drawn by
    position, ``Q = 1``) or an evaluation batch (``L = S``, ``Q = S``: the first ``max_queries`` present
    keys in key order are scored, weighted per ``chunked_mean_weights`` with ``chunk``)."""
    keys, values = draw_pairs(num_keys, setting, batch_size, generator, evaluation=all_queries)
    table, present = last_values(keys, values, num_keys)
    if all_queries:
        queries = torch.arange(num_keys).expand(batch_size, num_keys).clone()
        scored = present & (torch.cumsum(present.long(), dim=1) <= max_queries)
        return RetrievalBatch(keys, values, queries, table, scored, chunked_mean_weights(scored, chunk))
    position = torch.randint(keys.shape[1], (batch_size, 1), generator=generator)
    queries = keys.gather(1, position)
    targets = table.gather(1, queries)
    mask = torch.ones_like(queries, dtype=torch.bool)
    return RetrievalBatch(keys, values, queries, targets, mask, mask.to(torch.float32))
