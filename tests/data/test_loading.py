"""Batch-valued loaders: rank sharding, per-epoch order, mid-epoch resume, Lightning leaves them alone."""

from __future__ import annotations

import lightning as L
import pytest
from torch.utils.data import Dataset

from fwp.data import BatchIndexSampler, BatchLoader


class Numbers(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def test_ranks_get_equal_shares_covering_every_batch():
    dataset = Numbers(11)
    shares = []
    for rank in range(3):
        sampler = BatchIndexSampler(dataset, shuffle=True, seed=5, rank=rank, world_size=3)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert {len(share) for share in shares} == {4}
    flat = [i for share in shares for i in share]
    assert set(flat) == set(range(11))
    assert len(flat) - len(set(flat)) == 1  # 12 slots for 11 batches: one batch repeated


def test_shuffled_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = BatchIndexSampler(Numbers(50), shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    assert sorted(order(0, 1)) == list(range(50))
    assert list(BatchIndexSampler(Numbers(50), shuffle=False)) == list(range(50))


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_resumes_after_the_batches_seen(shuffle):
    loader = BatchLoader(Numbers(10), shuffle=shuffle, seed=3)
    loader.sampler.set_epoch(4)
    full = list(loader)
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(4)]
    state = loader.state_dict()
    assert state == {"batches_seen": 4, "epoch": 4} and seen == full[:4]

    resumed = BatchLoader(Numbers(10), shuffle=shuffle, seed=3)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)
    assert len(resumed) == 10
    assert list(resumed) == full[4:]
    assert resumed.state_dict() == {"batches_seen": 10, "epoch": 4}
    assert list(resumed) == full  # the next pass starts from the beginning again


def test_a_state_of_a_finished_epoch_does_not_skip_into_the_next():
    """Lightning resumes a checkpoint taken at an epoch's last batch in the next epoch: that epoch
    starts at its first batch (the saved count belongs to the finished one)."""
    loader = BatchLoader(Numbers(6), shuffle=True, seed=3)
    loader.sampler.set_epoch(1)
    next_epoch = list(loader)
    resumed = BatchLoader(Numbers(6), shuffle=True, seed=3)
    resumed.load_state_dict({"batches_seen": 6, "epoch": 0})
    resumed.sampler.set_epoch(1)
    assert list(resumed) == next_epoch


@pytest.mark.parametrize(
    "state", [{"batches_seen": 2, "epoch": 0}, {"batches_seen": 2}], ids=["unfinished epoch", "no epoch"]
)
def test_a_state_of_an_unfinished_epoch_skips_as_lightning_counts(state: dict):
    """Lightning resumes a checkpoint written when ``max_steps`` ended the fit mid-epoch in the next
    epoch with its batch counter kept; older checkpoints have no epoch: both skip the batches seen."""
    resumed = BatchLoader(Numbers(6))
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    assert list(resumed) == [2, 3, 4, 5]


def test_lightning_does_not_inject_a_distributed_sampler():
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False)
    loader = BatchLoader(Numbers(4))
    assert trainer._accelerator_connector.is_distributed
    assert not trainer._data_connector._requires_distributed_sampler(loader)


def test_bad_rank_is_named():
    with pytest.raises(ValueError, match="rank"):
        BatchIndexSampler(Numbers(3), shuffle=False, rank=2, world_size=2)
