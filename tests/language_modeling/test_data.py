"""Language-modelling data: Transformer-XL columns and segments, rank sharding, the data module."""

from __future__ import annotations

import pickle
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fwp.data import EOS_ID, DataError
from tasks.language_modeling.data import LanguageModelingDataModule, SegmentDataset, SlidingWindowDataset
from tasks.language_modeling.synthetic import write_synthetic_corpus

SMALL = {"train_lines": 40, "valid_lines": 8, "test_lines": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("wikitext"), **SMALL)


@pytest.fixture
def stream(tmp_path):
    path = tmp_path / "stream.npy"
    np.save(path, np.arange(1000, 1103, dtype=np.int32))  # 103 tokens
    return np.load(path, mmap_mode="r")


def column_texts(dataset: SegmentDataset) -> torch.Tensor:
    """Rebuild the dataset's columns ``[B, L]`` from its segments, checking the targets on the way."""
    inputs = []
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["segment_index"] == index
        assert item["input"].dtype == item["target"].dtype == torch.long
        torch.testing.assert_close(item["input"][:, 1:], item["target"][:, :-1])
        inputs.append(item["input"])
    return torch.cat([*inputs, item["target"][:, -1:]], dim=1)


def test_segments_walk_contiguous_columns(stream):
    dataset = SegmentDataset(stream, batch_size=4, segment_length=7)
    # 103 // 4 = 25 tokens per column, 24 predictions per column: segments of 7, 7, 7, 3
    assert len(dataset) == 4
    assert [dataset[i]["input"].shape for i in range(4)] == [(4, 7)] * 3 + [(4, 3)]
    columns = column_texts(dataset)
    expected = torch.as_tensor(np.asarray(stream[:100], dtype=np.int64)).reshape(4, 25)
    torch.testing.assert_close(columns, expected)
    with pytest.raises(IndexError):
        dataset[4]


def test_ranks_own_disjoint_columns_covering_the_stream(stream):
    world_size, batch_size = 2, 3
    per_rank = [
        column_texts(SegmentDataset(stream, batch_size=batch_size, segment_length=5, rank=r, world_size=2))
        for r in range(world_size)
    ]
    assert len(SegmentDataset(stream, batch_size=3, segment_length=5, rank=1, world_size=2)) == 4
    # 103 // 6 = 17 tokens per column; rank r holds columns r·B .. (r+1)·B - 1.
    rebuilt = torch.cat(per_rank).reshape(-1)
    torch.testing.assert_close(rebuilt, torch.as_tensor(np.asarray(stream[:102], dtype=np.int64)))
    assert not set(per_rank[0].reshape(-1).tolist()) & set(per_rank[1].reshape(-1).tolist())


def test_too_short_stream_and_bad_sizes_are_named(stream):
    with pytest.raises(ValueError, match="103 tokens is too short for 64 columns"):
        SegmentDataset(stream, batch_size=32, segment_length=4, world_size=2)
    with pytest.raises(ValueError, match="segment_length"):
        SegmentDataset(stream, batch_size=2, segment_length=0)


def scored_positions(dataset: SlidingWindowDataset) -> list[tuple[int, int]]:
    """``(target position, tokens of context)`` of every target the windows score, for a stream whose
    token at position ``p`` is ``1000 + p``."""
    scored = []
    for index in range(len(dataset)):
        item = dataset[index]
        torch.testing.assert_close(item["input"][:, 1:], item["target"][:, :-1])
        for inputs, targets, first in zip(item["input"], item["target"], item["score_from"], strict=True):
            start = int(inputs[0]) - 1000
            scored += [(int(t) - 1000, int(t) - 1000 - start) for t in targets[int(first) :]]
    return scored


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(("window", "stride"), [(7, 1), (7, 3), (7, 7), (200, 5)])
def test_sliding_windows_score_every_target_once_with_the_longest_context(stream, window, stride, world_size):
    shares = [
        SlidingWindowDataset(
            stream, batch_size=4, window_length=window, stride=stride, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    assert len({len(share) for share in shares}) == 1  # every rank runs as many batches
    scored = sorted(pair for share in shares for pair in scored_positions(share))
    assert [position for position, _ in scored] == list(range(1, 103))  # N - 1 targets, each once
    window = min(window, 102)
    for position, context in scored:
        assert min(position, window - stride + 1) <= context <= min(position, window)
        if stride == 1:
            assert context == min(position, window)


def test_sliding_windows_with_stride_t_are_the_segments_of_one_column(stream):
    windows = SlidingWindowDataset(stream, batch_size=1, window_length=6, stride=6)  # 102 = 17 · 6
    segments = SegmentDataset(stream, batch_size=1, segment_length=6)
    assert len(windows) == len(segments) == 17
    for index in range(17):
        assert windows[index]["score_from"].tolist() == [0]
        for key in ("input", "target"):
            torch.testing.assert_close(windows[index][key], segments[index][key])


def test_dataset_pickles_the_stream_by_file_name(stream):
    dataset = SegmentDataset(stream, batch_size=2, segment_length=5)
    payload = pickle.dumps(dataset)
    assert str(stream.filename).encode() in payload and len(payload) < stream.nbytes
    restored = pickle.loads(payload)
    torch.testing.assert_close(restored[3]["input"], dataset[3]["input"])


def test_data_module_batches_the_encoded_stream(corpus, tmp_path):
    data = LanguageModelingDataModule(
        str(corpus), batch_size=3, segment_length=16, eval_segment_length=32, cache_dir=str(tmp_path)
    )
    assert data.vocab_size == data.tokenizer.get_vocab_size() > 100
    assert data.eos_id == EOS_ID and data.pad_id == 0
    data.prepare_data()
    data.setup("fit")
    train = data.train_dataloader()
    batches = list(train)
    assert len(batches) == len(train) == len(data.datasets["train"])
    assert batches[0]["input"].shape == (3, 16) and batches[0]["segment_index"] == 0
    assert next(iter(data.val_dataloader()))["input"].shape == (3, 32)
    # The first column starts the train file: its first line is blank, then the heading.
    text = data.tokenizer.decode(batches[0]["input"][0].tolist(), skip_special_tokens=False)
    heading = (corpus / "wiki.train.tokens").read_text().split("\n")[1].strip()
    assert text.startswith(f"<eos> {heading} <eos> <eos>")
    stream = data.token_stream("train")
    rows = torch.cat([b["input"] for b in batches] + [batches[-1]["target"][:, -1:]], dim=1)
    L = len(stream) // 3
    torch.testing.assert_close(
        rows, torch.as_tensor(np.asarray(stream[: 3 * L], dtype=np.int64)).reshape(3, L)
    )


def test_data_module_shards_by_trainer_rank(corpus, tmp_path):
    firsts = []
    for rank in range(2):
        data = LanguageModelingDataModule(
            str(corpus), batch_size=2, segment_length=8, cache_dir=str(tmp_path)
        )
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        data.setup("test")
        firsts.append(next(iter(data.test_dataloader()))["input"])
    stream = np.asarray(data.token_stream("test"), dtype=np.int64)
    L = len(stream) // 4
    torch.testing.assert_close(torch.cat(firsts), torch.as_tensor(stream[: 4 * L]).reshape(4, L)[:, :8])


def test_bpe_data_module_and_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.setenv("FWP_CACHE", str(tmp_path))
    data = LanguageModelingDataModule(tokenizer="bpe", bpe_vocab_size=400)
    assert data.data_path.parent.parent == tmp_path
    assert sorted(p.name for p in data.data_path.glob("wiki.*.tokens")) == [
        "wiki.test.tokens",
        "wiki.train.tokens",
        "wiki.valid.tokens",
    ]
    assert 260 < data.vocab_size <= 400
    line = (data.data_path / "wiki.valid.tokens").read_text().split("\n")[3].strip()
    assert data.tokenizer.decode(data.tokenizer.encode(line).ids) == line


def test_missing_directory_split_and_empty_file_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + ".*wiki.train.tokens"):
        LanguageModelingDataModule(str(missing)).prepare_data()
    write_synthetic_corpus(tmp_path, **SMALL)
    (tmp_path / "wiki.test.tokens").unlink()
    data = LanguageModelingDataModule(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "wiki.test.tokens"))):
        data.prepare_data()
    (tmp_path / "wiki.test.tokens").write_text("")
    with pytest.raises(ValueError, match="empty: " + re.escape(str(tmp_path / "wiki.test.tokens"))):
        data.prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokenizer": "bpe"}, "bpe_vocab_size"),
        ({"tokenizer": "chars"}, "tokenizer must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_segment_length": 0}, "eval_segment_length"),
        ({"eval_mode": "strided"}, "eval_mode must be one of .*eval_mode='strided'"),
        ({"eval_stride": 0}, r"eval_stride must be in \[1, eval_segment_length=256\].*eval_stride=0"),
        ({"eval_stride": 65, "segment_length": 64}, r"eval_segment_length=64\].*eval_stride=65"),
        ({"eval_stride": 33, "eval_segment_length": 32}, r"eval_segment_length=32\].*eval_stride=33"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LanguageModelingDataModule(**kwargs)


def test_bad_window_settings_are_named(stream):
    with pytest.raises(ValueError, match=r"window_length=4\].*eval_stride=5"):
        SlidingWindowDataset(stream, batch_size=2, window_length=4, stride=5)
    with pytest.raises(ValueError, match="batch_size"):
        SlidingWindowDataset(stream, batch_size=0, window_length=4, stride=1)


def test_sliding_mode_windows_the_evaluation_splits_only(corpus, tmp_path):
    options = {"batch_size": 2, "segment_length": 8, "eval_batch_size": 5, "cache_dir": str(tmp_path)}
    data = LanguageModelingDataModule(str(corpus), eval_mode="sliding", eval_stride=2, **options)
    data.setup("fit")
    assert isinstance(data.datasets["train"], SegmentDataset)
    batch = next(iter(data.val_dataloader()))
    assert batch["input"].shape == (5, 8) and batch["score_from"].tolist() == [0, 6, 6, 6, 6]
    data.setup("predict")
    assert isinstance(data.datasets["test"], SegmentDataset)
    data.setup("test")
    scored = sum(int((8 - b["score_from"]).sum()) for b in data.test_dataloader())
    assert scored == len(data.token_stream("test")) - 1


def test_lightning_resumes_mid_epoch_at_the_next_segment(corpus, tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab_size, 4)
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["segment_index"])
            return self.embedding(batch["input"]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(max_steps, ckpt_path=None):
        data = LanguageModelingDataModule(
            str(corpus), batch_size=2, segment_length=64, cache_dir=str(tmp_path)
        )
        model = Recorder(data.vocab_size)
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path / f"after{max_steps}", every_n_train_steps=3
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            callbacks=[checkpoint],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return model.seen, len(data.datasets["train"])

    seen, segments_per_epoch = fit(3)
    assert seen == [0, 1, 2] and segments_per_epoch > 6
    (checkpoint,) = (tmp_path / "after3").glob("*.ckpt")
    resumed, _ = fit(6, ckpt_path=checkpoint)
    assert resumed == [3, 4, 5]


@pytest.mark.parametrize(
    ("stage", "split", "option"), [("fit", "train", "batch_size"), ("test", "test", "eval_batch_size")]
)
def test_split_too_short_for_the_batch_names_its_file_and_the_option(tmp_path, stage, split, option):
    """Before: 'a stream of 5 tokens is too short for 16 columns', naming neither file nor option."""
    write_synthetic_corpus(tmp_path, **SMALL)
    (tmp_path / f"wiki.{split}.tokens").write_text("only a few words\n")
    data = LanguageModelingDataModule(str(tmp_path), batch_size=16)
    with pytest.raises(
        DataError, match=f"{re.escape(str(tmp_path / f'wiki.{split}.tokens'))}.*smaller {option}"
    ):
        data.setup(stage)
