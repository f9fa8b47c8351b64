"""Data module of the retrieval task: freshly generated sequences, reproducible from a seed.

The training stream is one long epoch of ``train_batches`` batches. Batch ``i`` is made of shards of
sequences; shard ``s`` of batch ``i`` is a pure function of ``(seed, s, i)``. Rank ``r`` of a run
with ``n = shards_per_rank`` trains on shards ``r·n .. r·n + n - 1`` of every batch, so

- DDP ranks see distinct data, dataloader workers need no seeding (items are functions of the index);
- ``W`` ranks with ``batch_size = B`` and one process with ``batch_size = W·B, shards_per_rank = W``
  train on the same global batches (the loss is a mean over queries, DDP averages the ranks' equal-size
  means): a multi-GPU run can be reproduced on one device;
- the loader (``fwp.data.BatchLoader``) is resumable: a mid-epoch checkpoint records how many batches
  were handed out and training resumes at the next one (Lightning alone would restart the epoch's data
  from batch 0); its sampler is a ``DistributedSampler`` so Lightning does not inject one.

Every evaluation draws the same fresh sequences on every rank, seeded by the global step at which it
runs, so evaluation metrics are identical on all ranks (no cross-rank reduction needed or padding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fwp.data import BatchLoader
from tasks.retrieval.generator import RetrievalBatch, make_batch


def batch_generator(seed: int, shard: int, index: int, stream: int) -> torch.Generator:
    """A generator for one shard of a batch, distinct for every (seed, shard, index, stream)."""
    mixed = hash((seed, shard, index, stream)) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(mixed)


def concatenate(batches: list[RetrievalBatch]) -> RetrievalBatch:
    """The batches' sequences one after the other (along the batch dimension)."""
    if len(batches) == 1:
        return batches[0]
    fields = ("keys", "values", "queries", "targets", "query_mask", "query_weight")
    return RetrievalBatch(**{name: torch.cat([getattr(b, name) for b in batches]) for name in fields})


TRAIN_STREAM, EVAL_STREAM, TEST_STREAM = 0, 1, 2


class TrainingBatches(Dataset):
    """``num_batches`` training batches of one rank; one query per sequence.

    Item ``i`` is shards ``rank·n .. rank·n + n - 1`` (``n = shards``) of batch ``i``, each of
    ``batch_size`` sequences, concatenated: ``n · batch_size`` sequences."""

    def __init__(
        self,
        num_keys: int,
        setting: int,
        batch_size: int,
        num_batches: int,
        seed: int,
        rank: int,
        shards: int = 1,
    ):
        self.num_keys, self.setting, self.batch_size = num_keys, setting, batch_size
        self.num_batches, self.seed, self.rank, self.shards = num_batches, seed, rank, shards

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> RetrievalBatch:
        first = self.rank * self.shards
        return concatenate(
            [
                make_batch(
                    self.num_keys,
                    self.setting,
                    self.batch_size,
                    batch_generator(self.seed, shard, index, TRAIN_STREAM),
                    all_queries=False,
                )
                for shard in range(first, first + self.shards)
            ]
        )


class EvaluationBatch(IterableDataset):
    """One batch of ``num_sequences`` fresh sequences of length S with every present key queried (at
    most ``max_queries``; the loss averaged over chunks of ``chunk`` queries, as the official code
    does), seeded by ``round_of()`` (the trainer's global step), so each evaluation sees new sequences."""

    def __init__(
        self,
        num_keys: int,
        setting: int,
        num_sequences: int,
        seed: int,
        stream: int,
        round_of: Callable[[], int],
        max_queries: int,
        chunk: int,
    ):
        self.num_keys, self.setting, self.num_sequences = num_keys, setting, num_sequences
        self.seed, self.stream, self.round_of = seed, stream, round_of
        self.max_queries, self.chunk = max_queries, chunk

    def __iter__(self) -> Iterator[RetrievalBatch]:
        generator = batch_generator(self.seed, 0, self.round_of(), self.stream)
        yield make_batch(
            self.num_keys,
            self.setting,
            self.num_sequences,
            generator,
            all_queries=True,
            max_queries=self.max_queries,
            chunk=self.chunk,
        )


class RetrievalDataModule(L.LightningDataModule):
    """Key/value retrieval sequences (Schlag et al. 2021, §6.1).

    Args:
        num_keys: S, the number of distinct keys (and of values).
        setting: 1 (capacity: L = S, keys and values permutations) or 2 (update: keys and values drawn
            with replacement, L = 2S in training and S in evaluation, as in the official code).
        batch_size: training sequences per batch and rank (the paper: 32). The evaluation loss is the
            mean over chunks of (global batch size = ``batch_size`` × ranks) queries of each sequence
            (the official average), so a DDP run and its one-process twin report the same loss.
        eval_sequences: fresh sequences per evaluation, each with every present key queried (paper: 20).
        eval_max_queries: at most this many keys queried per evaluation sequence (official: 200).
        train_batches: length of the training stream; set it to at least trainer.max_steps.
        seed: the data seed; every shard of a batch is a function of (seed, shard, batch index).
        shards_per_rank: shards making up a rank's batch (each ``batch_size / shards_per_rank``
            sequences); ``W`` to reproduce on one device a run of ``W`` ranks (module docstring).
    """

    def __init__(
        self,
        num_keys: int = 20,
        setting: Literal[1, 2] = 1,
        batch_size: int = 32,
        eval_sequences: int = 20,
        eval_max_queries: int = 200,
        train_batches: int = 100_000,
        seed: int = 0,
        shards_per_rank: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_keys", num_keys),
            ("batch_size", batch_size),
            ("eval_sequences", eval_sequences),
            ("eval_max_queries", eval_max_queries),
            ("train_batches", train_batches),
            ("shards_per_rank", shards_per_rank),
        ):
            if value < 1:
                raise ValueError(f"RetrievalDataModule: {name} must be >= 1, got {name}={value}")
        if batch_size % shards_per_rank:
            raise ValueError(
                f"RetrievalDataModule: batch_size must be a multiple of shards_per_rank, got "
                f"batch_size={batch_size}, shards_per_rank={shards_per_rank}"
            )
        self.save_hyperparameters()
        self.num_keys = num_keys

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _global_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> BatchLoader:
        hp = self.hparams
        shard_size = hp.batch_size // hp.shards_per_rank
        batches = TrainingBatches(
            hp.num_keys, hp.setting, shard_size, hp.train_batches, hp.seed, self._rank(), hp.shards_per_rank
        )
        return BatchLoader(batches)

    def _evaluation_loader(self, stream: int) -> DataLoader:
        hp = self.hparams
        batch = EvaluationBatch(
            hp.num_keys,
            hp.setting,
            hp.eval_sequences,
            hp.seed,
            stream,
            self._global_step,
            max_queries=hp.eval_max_queries,
            chunk=hp.batch_size * self._world_size(),
        )
        return DataLoader(batch, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(EVAL_STREAM)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(TEST_STREAM)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(TEST_STREAM)
