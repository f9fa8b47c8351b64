"""Language-modelling data: WikiText-103 files (or the synthetic corpus) as Transformer-XL segments.

A split's token stream ``x[0 .. N-1]`` (every line's tokens + ``<eos>``) is cut into ``C = W·B``
contiguous columns of ``L = N // C`` tokens (the last ``N mod C`` tokens are dropped), ``W`` being the
number of ranks and ``B`` the batch size per rank; rank ``r`` owns columns ``r·B .. (r+1)·B - 1``.
Segment ``s`` of an epoch covers positions ``s·T .. s·T + T' - 1`` of every column, with
``T' = min(T, L - 1 - s·T)`` (only the last segment is shorter), and is the batch

    input  [B, T'] = column[:, s·T     : s·T + T']
    target [B, T'] = column[:, s·T + 1 : s·T + T' + 1]

so row ``b`` of consecutive segments continues the same text and a model may carry its state from one
segment to the next (reset it when ``segment_index == 0``). Batches are served in order, never
shuffled. The dataset shards itself by rank, so the loader must not be given a ``DistributedSampler``
by Lightning: its sampler already is one (see ``fwp.data.loading``); no Trainer flag is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from fwp.data import (
    EOS_ID,
    PAD_ID,
    BatchLoader,
    cached_token_stream,
    corpus_directories,
    load_or_train_tokenizer,
    rank_and_world_size,
)
from tasks.language_modeling.synthetic import SPLIT_FILES, write_synthetic_corpus

SYNTHETIC_SUBDIR = "synthetic/wikitext-v1"


class SegmentDataset(Dataset):
    """Transformer-XL segments of one token stream for one rank (module docstring); item ``s`` is
    ``{"input": LongTensor[B, T'], "target": LongTensor[B, T'], "segment_index": s}``."""

    def __init__(
        self,
        stream: np.ndarray,
        *,
        batch_size: int,
        segment_length: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("segment_length", segment_length)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        num_columns = world_size * batch_size
        self.column_length = len(stream) // num_columns
        if self.column_length < 2:
            raise ValueError(
                f"a stream of {len(stream)} tokens is too short for {num_columns} columns "
                f"(world_size={world_size} × batch_size={batch_size}): need at least 2 tokens per column"
            )
        self.stream = stream
        self.num_columns = num_columns
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.segment_length = segment_length

    def __len__(self) -> int:
        return math.ceil((self.column_length - 1) / self.segment_length)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"segment index {index} out of range [0, {len(self)})")
        start = index * self.segment_length
        length = min(self.segment_length, self.column_length - 1 - start)
        columns = self.stream[: self.num_columns * self.column_length].reshape(self.num_columns, -1)
        block = torch.from_numpy(columns[self.rows, start : start + length + 1].astype(np.int64))
        return {"input": block[:, :-1], "target": block[:, 1:], "segment_index": index}

    def __getstate__(self) -> dict[str, Any]:
        # Spawned DataLoader workers reopen the memmap instead of receiving a copy of the stream.
        return {**self.__dict__, "stream": str(self.stream.filename)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stream=np.load(state["stream"], mmap_mode="r"))


class LanguageModelingDataModule(L.LightningDataModule):
    """WikiText-103-style language modelling with Transformer-XL batching (module docstring).

    Reads ``wiki.train.tokens``, ``wiki.valid.tokens``, ``wiki.test.tokens`` from ``data_dir``. The
    vocabulary is built from the train split only, saved as JSON and reused; each split is encoded once
    into a memory-mapped token cache. ``vocab_size`` (the tokenizer's size, special tokens included) is
    available right after construction (the tokenizer is built on first access), so the CLI can link it
    to the model. Under DDP each rank reads its own columns of the stream (no ``DistributedSampler``).

    Args:
        data_dir: Directory holding ``wiki.{train,valid,test}.tokens``. ``None`` generates the synthetic
            corpus of ``tasks.language_modeling.synthetic`` (once) under ``<cache root>/synthetic``.
        tokenizer: ``word`` (whitespace-split words, every training word kept, WikiText-103 style) or
            ``bpe`` (byte-level BPE with ``bpe_vocab_size`` tokens).
        bpe_vocab_size: Number of BPE tokens; required when ``tokenizer`` is ``bpe``, unused otherwise.
        batch_size: Columns (sequences) per training batch, per rank.
        eval_batch_size: Columns per validation/test batch, per rank; ``None`` means ``batch_size``.
        segment_length: Tokens per training segment (the model's context, ``T``).
        eval_segment_length: Tokens per validation/test segment; ``None`` means ``segment_length``.
        num_workers: DataLoader worker processes.
        cache_dir: Where the tokenizer and token caches are written. ``None``: beside the data for
            ``data_dir``; for the synthetic corpus, the cache root ``$FWP_CACHE`` or ``~/.cache/fwp``,
            which a given ``cache_dir`` replaces.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        tokenizer: Literal["word", "bpe"] = "word",
        bpe_vocab_size: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        segment_length: int = 256,
        eval_segment_length: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if tokenizer not in ("word", "bpe"):
            raise ValueError(f"tokenizer must be 'word' or 'bpe', got tokenizer={tokenizer!r}")
        if tokenizer == "bpe" and bpe_vocab_size is None:
            raise ValueError("tokenizer='bpe' needs bpe_vocab_size (the number of BPE tokens), got None")
        positive = {"batch_size": batch_size, "segment_length": segment_length}
        optional = {"eval_batch_size": eval_batch_size, "eval_segment_length": eval_segment_length}
        for name, value in (*positive.items(), *optional.items()):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got num_workers={num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.tokenizer_kind = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.segment_length = segment_length
        self.eval_segment_length = eval_segment_length or segment_length
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self._tokenizer: Tokenizer | None = None
        self.datasets: dict[str, SegmentDataset] = {}

    def _directories(self) -> tuple[Path, Path]:
        return corpus_directories(
            self.data_dir,
            self.cache_dir,
            synthetic_subdir=SYNTHETIC_SUBDIR,
            expected_files=tuple(SPLIT_FILES.values()),
            generate=write_synthetic_corpus,
        )

    @property
    def data_path(self) -> Path:
        """The corpus directory; the synthetic corpus is generated on first access if ``data_dir`` is None."""
        return self._directories()[0]

    @property
    def cache_path(self) -> Path:
        """Where the tokenizer and the token caches are written."""
        return self._directories()[1]

    def split_file(self, split: str) -> Path:
        """Path of ``split``'s text file; ``FileNotFoundError`` naming it and the expected files if absent."""
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {tuple(SPLIT_FILES)}, got split={split!r}")
        directory = self.data_path
        expected = ", ".join(SPLIT_FILES.values())
        if not directory.is_dir():
            raise FileNotFoundError(f"data_dir {directory} is not a directory; it should hold {expected}")
        path = directory / SPLIT_FILES[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"missing {split} split: no file {path} (data_dir should hold {expected})"
            )
        return path

    @property
    def tokenizer(self) -> Tokenizer:
        """The vocabulary of the train split (built and saved on first access, then loaded)."""
        if self._tokenizer is None:
            self._tokenizer = load_or_train_tokenizer(
                [self.split_file("train")],
                kind=self.tokenizer_kind,
                save_dir=self.cache_path,
                vocab_size=self.bpe_vocab_size if self.tokenizer_kind == "bpe" else None,
            )
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (for the model's embedding and softmax)."""
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (never in a stream; for models that need one)."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """Id of ``<eos>``, which ends every line of the stream."""
        return EOS_ID

    def token_stream(self, split: str) -> np.ndarray:
        """The whole ``int32 [N]`` token stream of ``split`` (memory-mapped), e.g. for sliding-window eval."""
        return cached_token_stream(self.split_file(split), self.tokenizer, cache_dir=self.cache_path)

    def prepare_data(self) -> None:
        """Build the tokenizer and the token caches of every split (once per node)."""
        for split in SPLIT_FILES:
            self.token_stream(split)

    def segments(self, split: str, *, rank: int = 0, world_size: int = 1) -> SegmentDataset:
        """``split``'s segments for ``rank`` of ``world_size``, with that split's batch size and length."""
        training = split == "train"
        return SegmentDataset(
            self.token_stream(split),
            batch_size=self.batch_size if training else self.eval_batch_size,
            segment_length=self.segment_length if training else self.eval_segment_length,
            rank=rank,
            world_size=world_size,
        )

    def setup(self, stage: str) -> None:
        """Open the splits the stage needs, this rank's columns only."""
        splits = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
        splits = splits.get(stage, ())
        rank, world_size = rank_and_world_size(self.trainer)
        for split in splits:
            self.datasets[split] = self.segments(split, rank=rank, world_size=world_size)

    def _loader(self, split: str) -> BatchLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not set up: call setup() with a stage that uses it")
        return BatchLoader(self.datasets[split], num_workers=self.num_workers)

    def train_dataloader(self) -> BatchLoader:
        return self._loader("train")

    def val_dataloader(self) -> BatchLoader:
        return self._loader("valid")

    def test_dataloader(self) -> BatchLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split's segments: each row's first tokens are the prompts of ``predict``. A plain
        ``DataLoader``: Lightning rebuilds predict loaders with its own index-tracking sampler."""
        if "test" not in self.datasets:
            raise RuntimeError("the test split is not set up: call setup('predict') first")
        return DataLoader(self.datasets["test"], batch_size=None)
