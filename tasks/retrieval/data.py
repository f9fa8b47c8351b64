"""Data module of the retrieval task: freshly generated sequences, reproducible from a seed.

Every training batch is a pure function of ``(seed, rank, batch index)``, so runs are reproducible,
resumable at any step, and distinct across DDP ranks and dataloader workers without any sampler.
Every evaluation draws fresh sequences seeded by the global step at which it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tasks.retrieval.generator import RetrievalBatch, make_batch


def batch_generator(seed: int, rank: int, index: int, stream: int) -> torch.Generator:
    """A generator for one batch, distinct for every (seed, rank, index, stream) combination."""
    mixed = hash((seed, rank, index, stream)) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(mixed)


TRAIN_STREAM, EVAL_STREAM, TEST_STREAM = 0, 1, 2


class TrainingBatches(Dataset):
    """``num_batches`` training batches; batch ``i`` has one query per sequence."""

    def __init__(self, num_keys: int, setting: int, batch_size: int, num_batches: int, seed: int, rank: int):
        self.num_keys, self.setting, self.batch_size = num_keys, setting, batch_size
        self.num_batches, self.seed, self.rank = num_batches, seed, rank

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> RetrievalBatch:
        generator = batch_generator(self.seed, self.rank, index, TRAIN_STREAM)
        return make_batch(self.num_keys, self.setting, self.batch_size, generator, all_queries=False)


class EvaluationBatch(IterableDataset):
    """One batch of ``num_sequences`` fresh sequences with every key queried, seeded by ``round_of()``
    (the trainer's global step), so each evaluation sees new sequences."""

    def __init__(
        self,
        num_keys: int,
        setting: int,
        num_sequences: int,
        seed: int,
        stream: int,
        round_of: Callable[[], int],
    ):
        self.num_keys, self.setting, self.num_sequences = num_keys, setting, num_sequences
        self.seed, self.stream, self.round_of = seed, stream, round_of

    def __iter__(self) -> Iterator[RetrievalBatch]:
        generator = batch_generator(self.seed, 0, self.round_of(), self.stream)
        yield make_batch(self.num_keys, self.setting, self.num_sequences, generator, all_queries=True)


class RetrievalDataModule(L.LightningDataModule):
    """Key/value retrieval sequences (Schlag et al. 2021, §6.1).

    Args:
        num_keys: S, the number of distinct keys (and of values).
        setting: 1 (capacity: L = S unique keys) or 2 (update: L = 2S keys drawn with replacement).
        batch_size: training sequences per batch (the paper: 32).
        eval_sequences: fresh sequences per evaluation, each with every present key queried (paper: 20).
        train_batches: length of the training stream; set it to at least trainer.max_steps.
        seed: the data seed; every batch is a function of (seed, rank, batch index).
    """

    def __init__(
        self,
        num_keys: int = 20,
        setting: Literal[1, 2] = 1,
        batch_size: int = 32,
        eval_sequences: int = 20,
        train_batches: int = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_keys", num_keys),
            ("batch_size", batch_size),
            ("eval_sequences", eval_sequences),
            ("train_batches", train_batches),
        ):
            if value < 1:
                raise ValueError(f"RetrievalDataModule: {name} must be >= 1, got {name}={value}")
        self.save_hyperparameters()
        self.num_keys = num_keys

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _global_step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        batches = TrainingBatches(
            hp.num_keys, hp.setting, hp.batch_size, hp.train_batches, hp.seed, self._rank()
        )
        return DataLoader(batches, batch_size=None, shuffle=False)

    def _evaluation_loader(self, stream: int) -> DataLoader:
        hp = self.hparams
        batch = EvaluationBatch(
            hp.num_keys, hp.setting, hp.eval_sequences, hp.seed, stream, self._global_step
        )
        return DataLoader(batch, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(EVAL_STREAM)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(TEST_STREAM)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(TEST_STREAM)
