"""Properties of the retrieval sequences, checked over many seeds."""

import pytest
import torch

from tasks.retrieval.data import RetrievalDataModule, TrainingBatches
from tasks.retrieval.generator import last_values, make_batch, sequence_length

SEEDS = range(40)


def brute_force_last_value(keys: list[int], values: list[int], query: int) -> int | None:
    answer = None
    for key, value in zip(keys, values, strict=True):
        if key == query:
            answer = value
    return answer


@pytest.mark.parametrize("seed", SEEDS)
def test_setting1_keys_are_a_permutation(seed):
    batch = make_batch(7, 1, 5, torch.Generator().manual_seed(seed), all_queries=True)
    assert batch.keys.shape == (5, 7)
    assert torch.equal(batch.keys.sort(dim=1).values, torch.arange(7).expand(5, 7))
    assert batch.query_mask.all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("all_queries", [True, False])
def test_setting2_target_is_the_latest_value_of_the_query_key(seed, all_queries):
    batch = make_batch(6, 2, 4, torch.Generator().manual_seed(seed), all_queries=all_queries)
    assert batch.keys.shape == (4, 12)
    for row in range(4):
        keys, values = batch.keys[row].tolist(), batch.values[row].tolist()
        for query, target, valid in zip(
            batch.queries[row].tolist(),
            batch.targets[row].tolist(),
            batch.query_mask[row].tolist(),
            strict=True,
        ):
            expected = brute_force_last_value(keys, values, query)
            assert valid == (expected is not None)
            if valid:
                assert target == expected


def test_setting2_overwrites_happen():
    """With L = 2S drawn with replacement, keys repeat, so the update setting is really tested."""
    batch = make_batch(10, 2, 64, torch.Generator().manual_seed(0), all_queries=True)
    repeats = sum(len(set(row)) < len(row) for row in batch.keys.tolist())
    assert repeats == 64


def test_last_values_marks_absent_keys():
    keys = torch.tensor([[0, 2, 0]])
    values = torch.tensor([[5, 6, 7]])
    table, present = last_values(keys, values, 4)
    assert table[0, 0] == 7 and table[0, 2] == 6
    assert present.tolist() == [[True, False, True, False]]


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="setting"):
        sequence_length(5, 3)


def test_training_batches_are_reproducible_and_distinct_across_ranks_and_steps():
    rank0 = TrainingBatches(8, 2, 4, 10, seed=3, rank=0)
    again = TrainingBatches(8, 2, 4, 10, seed=3, rank=0)
    rank1 = TrainingBatches(8, 2, 4, 10, seed=3, rank=1)
    assert torch.equal(rank0[5].keys, again[5].keys)
    assert not torch.equal(rank0[5].keys, rank1[5].keys)
    assert not torch.equal(rank0[5].keys, rank0[6].keys)


@pytest.mark.parametrize("field", ["num_keys", "batch_size", "eval_sequences", "train_batches"])
def test_data_module_rejects_non_positive_sizes(field):
    with pytest.raises(ValueError, match=rf"{field}=0"):
        RetrievalDataModule(**{field: 0})


def test_setting2_training_queries_are_uniform_over_the_keys_that_occur():
    """One query per sequence, drawn uniformly from the distinct keys present (not from positions,
    which would favour keys that occur often): its mean number of occurrences is that of a uniformly
    chosen present key."""
    generator = torch.Generator().manual_seed(0)
    batch = make_batch(4, 2, 4000, generator, all_queries=False)
    occurrences = (batch.keys == batch.queries).sum(dim=1).double()
    _, present = last_values(batch.keys, batch.values, 4)
    counts = torch.stack([(batch.keys == key).sum(dim=1) for key in range(4)], dim=1).double()
    uniform_over_present = (counts.sum(dim=1) / present.sum(dim=1)).mean()
    assert bool(present.gather(1, batch.queries).all())
    assert abs(occurrences.mean() - uniform_over_present) < 0.05
