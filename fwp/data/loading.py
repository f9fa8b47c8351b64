"""DataLoaders over datasets whose items are whole batches, sharded by rank and resumable mid-epoch.

Lightning, under a distributed strategy, replaces a DataLoader's sampler with a ``DistributedSampler``
unless the sampler already is one. ``BatchIndexSampler`` is one: it deals batch indices to ranks itself
(``index r, r + W, r + 2W, ...`` of the epoch's order on rank ``r`` of ``W``, the order shuffled with
``seed + epoch`` or kept, padded by repetition to a multiple of ``W`` so that every rank gets as many
batches), so Lightning leaves it alone and no Trainer flag is needed. A dataset that shards itself
(language modelling: each rank owns its own token columns) uses it with ``rank=0, world_size=1``.

``BatchLoader`` counts the batches it has handed out in the current epoch; Lightning saves that count
and the epoch with mid-epoch checkpoints (``state_dict``) and, on resume, the loader skips the batches
already seen (``load_state_dict``), so training continues with the next batch of the same epoch order,
as Lightning's own batch counter does. The exception: a checkpoint taken after the last batch of an
epoch, which Lightning resumes at the first batch of the next epoch; the loader then skips nothing.
(Lightning also resumes a checkpoint written when ``max_steps`` ended the fit mid-epoch in the next
epoch, but with its batch counter kept: there the loader skips, as Lightning counts.)
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


def rank_and_world_size(trainer: Any | None) -> tuple[int, int]:
    """``(global_rank, world_size)`` of a Lightning ``trainer``, or ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def check_rank(rank: int, world_size: int) -> None:
    """A ValueError naming both unless ``0 ≤ rank < world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")


class BatchIndexSampler(DistributedSampler):
    """Indices ``0 .. num_batches - 1`` of a batch-valued dataset, this rank's share, from ``start`` on.

    ``set_epoch`` (called by Lightning every epoch) changes the shuffled order; ``start`` skips the first
    indices of this rank's share once (mid-epoch resume) and is reset to 0 after.
    """

    def __init__(
        self, dataset: Dataset, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        check_rank(rank, world_size)
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return islice(super().__iter__(), start, None)


class BatchLoader(DataLoader):
    """``DataLoader(dataset, batch_size=None, sampler=BatchIndexSampler(...))`` that can resume mid-epoch.

    ``state_dict()`` is ``{"batches_seen": n, "epoch": e}``, the batches handed out so far in the
    running epoch ``e`` (the sampler's, set by Lightning); ``load_state_dict`` makes the next iteration
    skip that many, unless epoch ``e`` was complete (``n`` ≥ the epoch's length) and the next iteration
    is of another epoch (module docstring). Its length stays the full epoch's.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        sampler = BatchIndexSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        super().__init__(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.batches_seen = 0
        self.resume_epoch: int | None = None

    def __iter__(self) -> Iterator[Any]:
        finished = self.resume_epoch is not None and self.sampler.start >= len(self)
        if finished and self.resume_epoch != self.sampler.epoch:
            self.sampler.start = 0  # the saved epoch is over: this one starts at its first batch
        self.resume_epoch = None
        self.batches_seen = self.sampler.start
        for batch in super().__iter__():
            self.batches_seen += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Batches handed out so far in the running epoch, and that epoch."""
        return {"batches_seen": self.batches_seen, "epoch": self.sampler.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration start after ``state["batches_seen"]`` batches of the epoch's order
        (nothing is skipped in a new epoch after a complete one)."""
        self.batches_seen = self.sampler.start = int(state["batches_seen"])
        self.resume_epoch = int(state["epoch"]) if "epoch" in state else None
