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

Sliding-window evaluation (``eval_mode="sliding"``) reads the split as one stream instead: every
target ``x[t]``, ``t = 1 .. N-1``, is scored exactly once, with the longest context a window of ``T``
tokens gives it. With ``T_w = min(T, N - 1)`` and stride ``s`` (``1 ≤ s ≤ T``), window ``j = 0 .. K-1``,
``K = 1 + ⌈(N - 1 - T_w) / s⌉``, ends at target ``e_j = min(T_w + j·s, N - 1)``:

    input  [T_w] = x[e_j - T_w     : e_j]
    target [T_w] = x[e_j - T_w + 1 : e_j + 1]

and scores its targets from position ``score_from_j = T_w - (e_j - e_{j-1})`` on (``e_{-1} = 0``): all
of them in the first window, the last ``s`` in the others (fewer in the last one). Windows are
independent (each starts from empty memory at position 0). Rank ``r`` of ``W`` takes windows ``r·M ..
(r+1)·M - 1``, ``M = ⌈K / W⌉``, in batches of up to ``B``; the windows past ``K - 1`` repeat the last one
with nothing scored, so every rank runs as many batches. With ``s = T``, ``B = 1`` and ``T | N - 1`` the
windows are exactly the segments of one column.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fwp.data import (
    CorpusDataModule,
    DataError,
    DataFileNotFoundError,
    cached_token_stream,
    check_rank,
    rank_and_world_size,
)
from tasks.language_modeling.synthetic import SPLIT_FILES, write_synthetic_corpus

EvalMode = Literal["segments", "sliding"]
EVAL_MODES = ("segments", "sliding")


class StreamDataset(Dataset):
    """A dataset over a memory-mapped token stream ``self.stream``: spawned DataLoader workers reopen
    the memmap instead of receiving a copy of the stream."""

    stream: np.ndarray

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": str(self.stream.filename)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stream=np.load(state["stream"], mmap_mode="r"))


class SegmentDataset(StreamDataset):
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
        check_sizes(batch_size=batch_size, segment_length=segment_length)
        check_rank(rank, world_size)
        num_columns = world_size * batch_size
        self.column_length = len(stream) // num_columns
        if self.column_length < 2:
            raise DataError(
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


def sliding_windows(num_tokens: int, window_length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows over a stream of ``num_tokens`` tokens (module docstring; ``window_length`` is
    ``T_w``): the stream position of each window's first input token and its first scored position
    ``score_from``, both ``int64 [K]``."""
    steps = stride * np.arange(1 + math.ceil((num_tokens - 1 - window_length) / stride), dtype=np.int64)
    ends = np.minimum(window_length + steps, num_tokens - 1)
    return ends - window_length, window_length - np.diff(ends, prepend=0)


class SlidingWindowDataset(StreamDataset):
    """Sliding windows over one token stream for one rank (module docstring); item ``i`` is this rank's
    ``i``-th batch ``{"input": LongTensor[k, T_w], "target": LongTensor[k, T_w], "score_from":
    LongTensor[k]}`` of ``k ≤ batch_size`` windows, row ``b`` scoring its targets ``[b, score_from[b]:]``."""

    def __init__(
        self,
        stream: np.ndarray,
        *,
        batch_size: int,
        window_length: int,
        stride: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_sizes(batch_size=batch_size, window_length=window_length)
        check_stride(stride, window_length, "window_length")
        check_rank(rank, world_size)
        if len(stream) < 2:
            raise DataError(f"a stream of {len(stream)} tokens has no target to score: need at least 2")
        self.stream = stream
        self.batch_size = batch_size
        self.window_length = min(window_length, len(stream) - 1)
        starts, score_from = sliding_windows(len(stream), self.window_length, stride)
        self.num_windows = len(starts)
        per_rank = math.ceil(self.num_windows / world_size)
        index = np.arange(rank * per_rank, (rank + 1) * per_rank)
        padding = index >= self.num_windows
        index = np.minimum(index, self.num_windows - 1)
        self.starts = starts[index]
        self.score_from = np.where(padding, self.window_length, score_from[index])

    def __len__(self) -> int:
        return math.ceil(len(self.starts) / self.batch_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"window batch index {index} out of range [0, {len(self)})")
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        positions = self.starts[rows, None] + np.arange(self.window_length + 1)
        block = torch.from_numpy(np.asarray(self.stream[positions], dtype=np.int64))
        score_from = torch.from_numpy(self.score_from[rows])
        return {"input": block[:, :-1], "target": block[:, 1:], "score_from": score_from}


def check_sizes(**sizes: int | None) -> None:
    """A ValueError naming the first of ``sizes`` below 1 (None, for "not given", passes)."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={value}")


def check_stride(stride: int, window_length: int, length_name: str) -> None:
    """A ValueError naming ``eval_stride`` unless ``1 ≤ stride ≤ window_length``."""
    if not 1 <= stride <= window_length:
        raise ValueError(
            f"eval_stride must be in [1, {length_name}={window_length}] (the window length), "
            f"got eval_stride={stride}"
        )


@contextlib.contextmanager
def _naming(path: Path, option: str) -> Iterator[None]:
    """Prefix a ``DataError`` about a split's length with the split's file and the option to change."""
    try:
        yield
    except DataError as error:
        raise DataError(f"{path}: {error}; use a longer split or a smaller {option}") from error


class LanguageModelingDataModule(CorpusDataModule):
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
        eval_batch_size: Columns (``segments``) or windows (``sliding``) per validation/test batch, per
            rank; ``None`` means ``batch_size``.
        segment_length: Tokens per training segment (the model's context, ``T``).
        eval_segment_length: Tokens per validation/test segment or window; ``None`` means
            ``segment_length``.
        eval_mode: How the validation and test splits are scored. ``segments``: Transformer-XL segments
            of ``eval_batch_size`` columns (a carry model carries its state along them). ``sliding``:
            the whole stream in sliding windows of ``eval_segment_length`` tokens (module docstring),
            every window from empty memory; costs about ``eval_segment_length / eval_stride`` times as
            much as ``segments``.
        eval_stride: Targets scored per window after the first in ``sliding`` mode, in ``[1,
            eval_segment_length]``; 1 is the paper's evaluation, ``eval_segment_length`` scores the
            segments of a single column.
        test_mode: ``eval_mode`` of the test split only (None: ``eval_mode``), e.g. ``sliding`` for the
            paper's test protocol while validation during training stays on cheap ``segments``.
        test_batch_size: ``eval_batch_size`` of the test split only (None: ``eval_batch_size``); 1 scores
            a carry model's test split as one stream.
        num_workers: DataLoader worker processes.
        cache_dir: Where the tokenizer and token caches are written. ``None``: beside the data for
            ``data_dir``; for the synthetic corpus, the cache root ``$FWP_CACHE`` or ``~/.cache/fwp``,
            which a given ``cache_dir`` replaces.
    """

    synthetic_subdir = "synthetic/wikitext-v1"
    synthetic_files = tuple(SPLIT_FILES.values())
    generate_synthetic = staticmethod(write_synthetic_corpus)
    datasets: dict[str, SegmentDataset | SlidingWindowDataset]

    def __init__(
        self,
        data_dir: str | None = None,
        tokenizer: Literal["word", "bpe"] = "word",
        bpe_vocab_size: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        segment_length: int = 256,
        eval_segment_length: int | None = None,
        eval_mode: EvalMode = "segments",
        eval_stride: int = 1,
        test_mode: EvalMode | None = None,
        test_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir, cache_dir=cache_dir, tokenizer_kind=tokenizer, bpe_vocab_size=bpe_vocab_size
        )
        if tokenizer not in ("word", "bpe"):
            raise ValueError(f"tokenizer must be 'word' or 'bpe', got tokenizer={tokenizer!r}")
        if tokenizer == "bpe" and bpe_vocab_size is None:
            raise ValueError("tokenizer='bpe' needs bpe_vocab_size (the number of BPE tokens), got None")
        check_sizes(
            batch_size=batch_size,
            segment_length=segment_length,
            eval_batch_size=eval_batch_size,
            eval_segment_length=eval_segment_length,
            test_batch_size=test_batch_size,
        )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got num_workers={num_workers}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {list(EVAL_MODES)}, got eval_mode={eval_mode!r}")
        if test_mode not in (None, *EVAL_MODES):
            raise ValueError(f"test_mode must be one of {list(EVAL_MODES)} or null, got {test_mode=}")
        check_stride(eval_stride, eval_segment_length or segment_length, "eval_segment_length")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.segment_length = segment_length
        self.eval_segment_length = eval_segment_length or segment_length
        self.eval_mode = eval_mode
        self.eval_stride = eval_stride
        self.test_mode = test_mode or eval_mode
        self.test_batch_size = test_batch_size or self.eval_batch_size
        self.num_workers = num_workers

    def split_file(self, split: str) -> Path:
        """Path of ``split``'s text file; ``FileNotFoundError`` naming it and the expected files if absent."""
        if split not in SPLIT_FILES:
            raise ValueError(f"split must be one of {tuple(SPLIT_FILES)}, got split={split!r}")
        directory = self.data_path
        expected = ", ".join(SPLIT_FILES.values())
        if not directory.is_dir():
            raise DataFileNotFoundError(f"data_dir {directory} is not a directory; it should hold {expected}")
        path = directory / SPLIT_FILES[split]
        if not path.is_file():
            raise DataFileNotFoundError(
                f"missing {split} split: no file {path} (data_dir should hold {expected})"
            )
        return path

    def tokenizer_files(self) -> list[Path]:
        """The train split: the vocabulary is built from it only."""
        return [self.split_file("train")]

    def token_stream(self, split: str) -> np.ndarray:
        """The whole ``int32 [N]`` token stream of ``split`` (memory-mapped), e.g. for sliding-window eval."""
        return cached_token_stream(self.split_file(split), self.tokenizer, cache_dir=self.cache_path)

    def prepare_data(self) -> None:
        """Build the tokenizer and the token caches of every split (once per node)."""
        for split in SPLIT_FILES:
            self.token_stream(split)

    def segments(self, split: str, *, rank: int = 0, world_size: int = 1) -> SegmentDataset:
        """``split``'s segments for ``rank`` of ``world_size``, with that split's batch size and length;
        a split too short for them is a ``DataError`` naming its file and the batch size option."""
        training = split == "train"
        option = "batch_size" if training else "eval_batch_size"
        stream = self.token_stream(split)
        with _naming(self.split_file(split), option):
            return SegmentDataset(
                stream,
                batch_size=self.batch_size if training else self.split_batch_size(split),
                segment_length=self.segment_length if training else self.eval_segment_length,
                rank=rank,
                world_size=world_size,
            )

    def split_batch_size(self, split: str) -> int:
        """Columns or windows per batch of an evaluation split: ``test_batch_size`` for ``test``."""
        return self.test_batch_size if split == "test" else self.eval_batch_size

    def windows(self, split: str, *, rank: int = 0, world_size: int = 1) -> SlidingWindowDataset:
        """``split``'s sliding windows for ``rank`` of ``world_size`` (``eval_segment_length`` tokens,
        ``eval_stride``, ``eval_batch_size`` windows per batch)."""
        stream = self.token_stream(split)
        with _naming(self.split_file(split), "eval_segment_length"):
            return SlidingWindowDataset(
                stream,
                batch_size=self.split_batch_size(split),
                window_length=self.eval_segment_length,
                stride=self.eval_stride,
                rank=rank,
                world_size=world_size,
            )

    def setup(self, stage: str) -> None:
        """Open the splits the stage needs, this rank's share only: segments, or sliding windows for
        the validation and test splits with ``eval_mode="sliding"`` (``predict`` always reads the test
        split's segments)."""
        splits = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
        splits = splits.get(stage, ())
        rank, world_size = rank_and_world_size(self.trainer)
        for split in splits:
            mode = self.test_mode if split == "test" else self.eval_mode
            sliding = mode == "sliding" and split != "train" and stage != "predict"
            dataset = self.windows if sliding else self.segments
            self.datasets[split] = dataset(split, rank=rank, world_size=world_size)

    def loader_options(self, split: str) -> dict[str, Any]:
        """Batches in order, not dealt to ranks by the loader: each rank's dataset holds its own share."""
        return {"num_workers": self.num_workers}

    def predict_dataloader(self) -> DataLoader:
        """The test split's first segment, one batch: the model continues its first row's first tokens
        when it is given no prompt, and draws as many samples as it is told. A plain ``DataLoader``:
        Lightning rebuilds predict loaders with its own index-tracking sampler."""
        if "test" not in self.datasets:
            raise RuntimeError("the test split is not set up: call setup('predict') first")
        return DataLoader(Subset(self.datasets["test"], [0]), batch_size=None)
