"""Translation data: joint BPE, checks of the parallel files, length buckets under a token budget,
filtering, per-epoch order, rank sharding, batch contents, prediction batches."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from fwp.data import BOS_ID, EOS_ID, PAD_ID, DataError
from tasks.translation.data import TranslationDataModule, pack_batches
from tasks.translation.synthetic import write_synthetic_parallel_corpus

SMALL = {"n_train": 400, "n_valid": 40, "n_test": 30}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_parallel_corpus(tmp_path_factory.mktemp("parallel"), **SMALL)


def data_module(corpus, tmp_path, **kwargs):
    options = {"bpe_vocab_size": 500, "max_tokens": 300, "max_positions": 64, "cache_dir": str(tmp_path)}
    return TranslationDataModule(str(corpus), **{**options, **kwargs})


def write_parallel(directory, pairs_by_split):
    directory.mkdir(parents=True, exist_ok=True)
    for split, (sources, targets) in pairs_by_split.items():
        (directory / f"{split}.src").write_text("".join(f"{line}\n" for line in sources), encoding="utf-8")
        (directory / f"{split}.tgt").write_text("".join(f"{line}\n" for line in targets), encoding="utf-8")
    return directory


def test_joint_bpe_round_trip(corpus, tmp_path):
    data = data_module(corpus, tmp_path)
    assert 260 < data.vocab_size <= 500
    assert (data.pad_id, data.bos_id, data.eos_id) == (PAD_ID, BOS_ID, EOS_ID)
    lines = (corpus / "valid.src").read_text().splitlines()[:5] + data.references("valid")[:5]
    for line in [*lines, "Unseen: Zürich, 1999 — ok?"]:
        ids = data.tokenizer.encode(line).ids
        assert data.decode([BOS_ID, *ids, EOS_ID, PAD_ID, 17]) == line


def test_batches_respect_the_budget_and_hold_the_pairs(corpus, tmp_path):
    data = data_module(corpus, tmp_path)
    data.setup("fit")
    references = data.references("train")
    sources = (corpus / "train.src").read_text().splitlines()
    seen = []
    for batch in data.datasets["train"]:
        B, S = batch["src"].shape
        T = batch["tgt_in"].shape[1]
        assert data.max_tokens >= B * max(S, T)
        assert batch["tgt_out"].shape == batch["tgt_padding_mask"].shape == (B, T)
        assert torch.equal(batch["src_padding_mask"], batch["src"] == PAD_ID)
        assert torch.equal(batch["tgt_padding_mask"], batch["tgt_out"] == PAD_ID)
        assert (batch["tgt_in"][:, 0] == BOS_ID).all()
        # tgt_out is tgt_in shifted left, with <eos> where tgt_in's last real token was.
        torch.testing.assert_close(
            batch["tgt_out"][:, :-1][~batch["tgt_padding_mask"][:, 1:]],
            batch["tgt_in"][:, 1:][~batch["tgt_padding_mask"][:, 1:]],
        )
        lengths = (~batch["tgt_padding_mask"]).sum(1)
        assert (batch["tgt_out"][torch.arange(B), lengths - 1] == EOS_ID).all()
        for b, i in enumerate(batch["ids"].tolist()):
            assert data.decode(batch["tgt_out"][b]) == references[i]
            assert data.decode(batch["src"][b]) == sources[i]
        seen += batch["ids"].tolist()
    assert sorted(seen) == list(range(SMALL["n_train"]))


def test_pack_batches_sorts_by_length_and_fills_the_budget():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 500), rng.integers(2, 30, 500)
    batches = pack_batches(src, tgt, max_tokens=200)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(500))
    keys = list(zip(src[order], tgt[order], strict=True))
    assert keys == sorted(keys)
    for batch, following in itertools.pairwise(batches):
        assert len(batch) * max(src[batch].max(), tgt[batch].max()) <= 200
        grown = np.append(batch, following[0])  # greedy: the next pair would not have fitted
        assert len(grown) * max(src[grown].max(), tgt[grown].max()) > 200
    with pytest.raises(ValueError, match="max_tokens=50"):
        pack_batches(np.array([30]), np.array([51]), max_tokens=50)


def test_a_batch_counts_as_fairseq_max_tokens_by_hand():
    """fairseq counts a batch as B × max(S, T) (padding included); this one used to count B × (S + T),
    which gave a fairseq user's budget about half the sentences.

    By hand, budget 12: sorted by (source, target) the pairs are 2 (2, 6), 0 (3, 4), 3 (4, 3), 1 (5, 2).
    [2, 0] costs 2 × max(3, 6) = 12; adding 3 would cost 3 × 6 = 18. [3, 1] costs 2 × max(5, 3) = 10.
    (Counting B × (S + T) would give [2], [0], [3], [1]: 8, 7, 7, 7.)"""
    batches = pack_batches(np.array([3, 5, 2, 4]), np.array([4, 2, 6, 3]), max_tokens=12)
    assert [batch.tolist() for batch in batches] == [[2, 0], [3, 1]]


def test_long_pairs_are_dropped_from_train_and_truncated_in_evaluation(corpus, tmp_path):
    data = data_module(corpus, tmp_path, max_positions=8, max_tokens=64)
    data.setup("fit")
    for split, size in (("train", SMALL["n_train"]), ("valid", SMALL["n_valid"])):
        source, target = data.line_tokens(split)
        long = (source.lengths > 8) | (target.lengths + 1 > 8)
        assert 0 < data.long_pairs[split] == np.count_nonzero(long) < size
        batches = list(data.datasets[split])
        ids = np.concatenate([batch["ids"].numpy() for batch in batches])
        expected = np.flatnonzero(~long) if split == "train" else np.arange(size)
        np.testing.assert_array_equal(np.sort(ids), expected)
        assert all(batch["src"].shape[1] <= 8 and batch["tgt_in"].shape[1] <= 8 for batch in batches)


def test_epoch_order_and_rank_shares(corpus, tmp_path):
    data = data_module(corpus, tmp_path)
    data.setup("fit")
    loader = data.train_dataloader()
    order = {}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        order[epoch] = [batch["ids"][0].item() for batch in loader]
    assert order[0] != order[1]
    loader.sampler.set_epoch(0)
    assert [batch["ids"][0].item() for batch in loader] == order[0]

    shares = []
    for rank in range(2):
        data.trainer = type("Trainer", (), {"global_rank": rank, "world_size": 2})()
        ranked = data.train_dataloader()
        ranked.sampler.set_epoch(3)
        shares.append([tuple(batch["ids"].tolist()) for batch in ranked])
    num_batches = len(data.datasets["train"])
    assert len(shares[0]) == len(shares[1]) == (num_batches + 1) // 2
    assert len(set(shares[0]) | set(shares[1])) == num_batches
    assert len(set(shares[0]) & set(shares[1])) == num_batches % 2  # only the padding repeats


def test_predict_batches_cover_every_source_line(corpus, tmp_path):
    lines = ["A horse runs.", "The small cats sleep near the tower and chase a bird."]
    predict_file = tmp_path / "input.txt"
    predict_file.write_text("\n".join(lines) + "\n")
    data = data_module(corpus, tmp_path, predict_file=str(predict_file))
    data.setup("predict")
    batches = list(data.predict_dataloader())
    assert all(set(batch) == {"src", "src_padding_mask", "ids"} for batch in batches)
    decoded = {
        i: data.decode(batch["src"][b]) for batch in batches for b, i in enumerate(batch["ids"].tolist())
    }
    assert decoded == dict(enumerate(lines))


def test_misaligned_files_name_both_counts(tmp_path):
    corpus = write_parallel(
        tmp_path / "corpus",
        {"train": (["A b.", "C d."], ["E f.", "G h."]), "valid": (["A b.", "C d.", "X."], ["E f.", "G h."])},
    )
    data = data_module(corpus, tmp_path, bpe_vocab_size=300)
    message = (
        f"{re.escape(str(corpus / 'valid.src'))} has 3 lines, {re.escape(str(corpus / 'valid.tgt'))} has 2"
    )
    with pytest.raises(DataError, match=message):
        data.line_tokens("valid")


def test_a_stray_carriage_return_does_not_split_a_line(tmp_path):
    """Before: Python's universal newlines made ``a\\rb`` two lines, so a source with a stray ``\\r``
    was reported as misaligned against its target (``wc -l`` counts one line)."""
    corpus = write_parallel(tmp_path / "corpus", {"train": (["A b.", "C\rd."], ["E f.", "G h."])})
    data = data_module(corpus, tmp_path, bpe_vocab_size=300)
    source, target = data.line_tokens("train")
    assert len(source) == len(target) == 2
    assert data.tokenizer.decode(source[1].tolist()) == "C\rd."


def test_a_training_split_without_any_kept_pair_is_an_error(tmp_path):
    """Before: every pair dropped (too long or with an empty side) gave no batch and a run that exited 0
    having trained nothing."""
    pairs = (["A b c d e f g h i j k l.", ""], ["E f g h i j k l m n o p.", "G h."])
    corpus = write_parallel(tmp_path / "corpus", {"train": pairs, "valid": (["A b."], ["E f."])})
    data = data_module(corpus, tmp_path, bpe_vocab_size=300, max_positions=4, max_tokens=64)
    with pytest.raises(
        DataError, match=f"(?s){re.escape(str(corpus / 'train.src'))}.*all 2.*max_positions=4"
    ):
        data.setup("fit")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("A b.\n   \nC d.\n", "line 2 is empty or blank")],
)
def test_bad_predict_file_is_named(corpus, tmp_path, content, message):
    predict_file = tmp_path / "input.txt"
    if content is not None:
        predict_file.write_text(content)
    data = data_module(corpus, tmp_path, predict_file=str(predict_file))
    with pytest.raises(DataError, match=f"{re.escape(str(predict_file))}.*{message}"):
        data.setup("predict")


@pytest.mark.parametrize(
    ("stdin", "message"), [("", "is empty"), ("\n \n", "is empty"), ("a\n\nb\n", "line 2")]
)
def test_bad_standard_input_is_named_as_such(corpus, tmp_path, monkeypatch, stdin, message):
    """Before: empty standard input was reported as an empty internal cache file ``stdin-….txt``."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    data = data_module(corpus, tmp_path, predict_file="-")
    with pytest.raises(DataError, match=f"standard input .*{message}"):
        data.setup("predict")


def test_empty_evaluation_line_is_named(tmp_path):
    pairs = (["A b.", "C d.", "E."], ["E f.", "  ", "F."])
    corpus = write_parallel(tmp_path / "corpus", {"train": (["A b."], ["E f."]), "valid": pairs})
    data = data_module(corpus, tmp_path, bpe_vocab_size=300)
    with pytest.raises(DataError, match=re.escape(str(corpus / "valid.tgt")) + ": line 2 is empty"):
        data.line_tokens("valid")


def test_training_pairs_with_an_empty_side_are_dropped(tmp_path):
    """As the WMT preparation's ``clean-corpus-n.perl`` does (raw text stopped before it may have some)."""
    pairs = (["A b.", "C d.", "", "E."], ["E f.", "  ", "G.", "F."])
    corpus = write_parallel(tmp_path / "corpus", {"train": pairs, "valid": (["A b."], ["E f."])})
    data = data_module(corpus, tmp_path, bpe_vocab_size=300)
    kept = sorted(int(i) for batch in data.batches("train").batches for i in batch)
    assert kept == [0, 3]


def test_missing_split_is_named(tmp_path):
    corpus = write_parallel(tmp_path / "corpus", {"train": (["A b."], ["E f."])})
    data = data_module(corpus, tmp_path, bpe_vocab_size=300)
    with pytest.raises(FileNotFoundError, match=re.escape(str(corpus / "test.src"))):
        data.setup("test")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 50, "max_positions": 64}, "max_tokens must be >= max_positions = 64"),
        ({"eval_max_tokens": 10}, "eval_max_tokens"),
        ({"src_lang": "de", "tgt_lang": "de"}, "must differ"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TranslationDataModule(**kwargs)


def test_predict_file_dash_reads_standard_input(tmp_path, monkeypatch):
    import io

    from tasks.translation.data import save_standard_input

    monkeypatch.setattr("sys.stdin", io.StringIO("the cat sleeps\na dog runs\n"))
    path = save_standard_input(tmp_path)
    assert path.read_text() == "the cat sleeps\na dog runs\n"
    assert path.parent == tmp_path
