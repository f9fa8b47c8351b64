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
    assert batch.keys.shape == (4, 6 if all_queries else 12)
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
    batch = make_batch(10, 2, 64, torch.Generator().manual_seed(0), all_queries=False)
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


@pytest.mark.parametrize(
    "field", ["num_keys", "batch_size", "eval_sequences", "eval_max_queries", "train_batches"]
)
def test_data_module_rejects_non_positive_sizes(field):
    with pytest.raises(ValueError, match=rf"{field}=0"):
        RetrievalDataModule(**{field: 0})


def test_setting2_training_queries_are_drawn_by_position():
    """As the official ``get_batch``: a uniform position's key is queried, so the queried key's mean
    number of occurrences is the mean over positions of their key's count (E[c²]/E[c]), larger than
    that of a key drawn uniformly from the distinct keys present (the previous behaviour)."""
    generator = torch.Generator().manual_seed(0)
    batch = make_batch(4, 2, 8000, generator, all_queries=False)
    occurrences = (batch.keys == batch.queries).sum(dim=1).double()
    counts = torch.stack([(batch.keys == key).sum(dim=1) for key in range(4)], dim=1).double()
    by_position = (counts.pow(2).sum(dim=1) / counts.sum(dim=1)).mean()
    uniform_over_present = (counts.sum(dim=1) / (counts > 0).sum(dim=1)).mean()
    assert by_position - uniform_over_present > 0.3
    assert abs(occurrences.mean() - by_position) < 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_setting1_values_are_a_permutation_too(seed):
    """The official data draws values without replacement in setting 1 (they were drawn with
    replacement)."""
    for all_queries in (True, False):
        batch = make_batch(9, 1, 5, torch.Generator().manual_seed(seed), all_queries=all_queries)
        assert torch.equal(batch.values.sort(dim=1).values, torch.arange(9).expand(5, 9))


def test_evaluation_sequences_have_length_s_in_both_settings():
    """The official ``get_all_queries`` draws S pairs even in setting 2, whose training uses 2S."""
    for setting in (1, 2):
        batch = make_batch(10, setting, 3, torch.Generator().manual_seed(0), all_queries=True)
        assert batch.keys.shape == batch.values.shape == (3, 10)
    assert make_batch(10, 2, 3, torch.Generator().manual_seed(0), all_queries=False).keys.shape == (3, 20)


def test_evaluation_scores_at_most_max_queries_keys_in_key_order():
    batch = make_batch(300, 1, 2, torch.Generator().manual_seed(0), all_queries=True, max_queries=200)
    assert batch.query_mask.sum(dim=1).tolist() == [200, 200]
    assert batch.query_mask[:, :200].all() and not batch.query_mask[:, 200:].any()


def official_chunked_mean(per_query: list[list[float]], chunk: int) -> float:
    """The official evaluation average: each sequence's queries split into chunks of ``chunk``, the
    mean of each chunk, then the mean over all chunks."""
    chunk_means = []
    for losses in per_query:
        for start in range(0, len(losses), chunk):
            part = losses[start : start + chunk]
            chunk_means.append(sum(part) / len(part))
    return sum(chunk_means) / len(chunk_means)


@pytest.mark.parametrize("seed", range(10))
def test_evaluation_weights_give_the_official_mean_of_chunk_means(seed):
    generator = torch.Generator().manual_seed(seed)
    batch = make_batch(23, 2, 4, generator, all_queries=True, chunk=5)
    losses = torch.rand(batch.queries.shape, generator=generator, dtype=torch.float64)
    per_query = [row[mask].tolist() for row, mask in zip(losses, batch.query_mask, strict=True)]
    weighted = (losses * batch.query_weight.double()).sum() / batch.query_weight.double().sum()
    assert weighted.item() == pytest.approx(official_chunked_mean(per_query, 5), rel=1e-6)
    assert len({len(row) for row in per_query}) > 1  # sequences differ in their number of queries


def test_data_module_evaluation_chunks_queries_by_the_training_batch_size():
    """50 queries per sequence in chunks of batch_size 8: six chunks of 8 and one of 2 per sequence."""
    data = RetrievalDataModule(num_keys=50, setting=1, batch_size=8, eval_sequences=3)
    (batch,) = list(data.val_dataloader())
    chunks = 3 * 7
    assert batch.query_weight[:, 0].tolist() == pytest.approx([1 / (8 * chunks)] * 3)
    assert batch.query_weight[:, -1].tolist() == pytest.approx([1 / (2 * chunks)] * 3)
    assert batch.query_weight.sum().item() == pytest.approx(1.0)


def test_evaluation_chunks_follow_the_global_batch_size():
    """2 ranks of batch_size 4 evaluate like one process of batch_size 8 (the DDP twin in
    tests/training/test_ddp.py); chunks of the per-rank size gave another loss."""

    class TwoRanks:
        world_size, global_rank, global_step = 2, 0, 0

    data = RetrievalDataModule(num_keys=50, setting=1, batch_size=4, eval_sequences=2)
    data.trainer = TwoRanks()
    (ddp,) = list(data.val_dataloader())
    (single,) = list(
        RetrievalDataModule(num_keys=50, setting=1, batch_size=8, eval_sequences=2).val_dataloader()
    )
    assert torch.equal(ddp.query_weight, single.query_weight)
