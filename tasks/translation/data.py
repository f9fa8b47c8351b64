"""Translation data: a parallel corpus ``{train,valid,test}.{src,tgt}``, joint BPE, length-bucketed batches.

Lines end at ``\\n`` only, as ``wc -l`` counts them (``fwp.data.text_lines``); both sides of a split
must have as many lines. Pairs longer than ``max_positions`` (source tokens, or target tokens + 1), and
pairs with an empty side, are dropped from the training split (as the WMT preparation's
``clean-corpus-n.perl`` would; a split with no pair left is an error); in
validation and test an empty line is an error and long pairs are truncated instead, so that every
reference sentence gets a hypothesis and BLEU stays comparable (the counts are logged). Pairs are sorted
by (source length, target length) and cut greedily into batches whose padded size ``B·max(S, T)``
stays within ``max_tokens`` (``S`` the longest source, ``T`` the longest target + 1, the width of
``tgt_in``/``tgt_out``), as fairseq's ``--max-tokens`` counts a batch (``B`` times the largest
``max(source, target)`` length of its pairs, padding included). Training visits the batches in a new order
each epoch (``torch`` generator seeded with ``seed + epoch``); under DDP, rank ``r`` of ``W`` takes
batches ``r, r + W, ...`` of that order, padded by repetition so every rank gets as many batches
(evaluation too: a repeated batch is evaluated twice; ``ids`` tell the duplicates apart, and the metrics
count each sentence once).

A batch, with ``B`` pairs::

    src               LongTensor[B, S]   source tokens, padded with <pad> = 0
    src_padding_mask  BoolTensor[B, S]   True at padding
    tgt_in            LongTensor[B, T]   <bos> + target tokens (decoder input)
    tgt_out           LongTensor[B, T]   target tokens + <eos> (what the decoder predicts)
    tgt_padding_mask  BoolTensor[B, T]   True at padding
    ids               LongTensor[B]      line numbers of the pairs in their split (0-based)

With ``packed: true`` a training batch holds the same ``B`` pairs without padding, laid end to end in
one row (``fwp.model.EncoderDecoder``'s packed form; evaluation and prediction batches stay padded)::

    src               LongTensor[1, ΣS_b]   the sources end to end
    src_cu_seqlens    LongTensor[B + 1]     their offsets 0 = c_0 < … < c_B = ΣS_b
    tgt_in, tgt_out   LongTensor[1, ΣT_b]   the targets (+ <bos> / <eos>) end to end
    tgt_cu_seqlens    LongTensor[B + 1]     their offsets
    ids               LongTensor[B]
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fwp.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    CorpusDataModule,
    DataError,
    DataFileNotFoundError,
    LineTokens,
    cache_writes,
    cached_line_tokens,
    rank_and_world_size,
    text_lines,
)
from fwp.ops import cu_seqlens_from_lengths
from tasks.translation.synthetic import SPLITS, write_synthetic_parallel_corpus


def pack_batches(src_widths: np.ndarray, tgt_widths: np.ndarray, *, max_tokens: int) -> list[np.ndarray]:
    """Pair indices sorted by (source width, target width), cut greedily into batches with
    ``B · max(max src_width, max tgt_width) <= max_tokens`` (fairseq's ``batch_by_size`` with
    ``num_tokens = max(source, target)``), a width being a row's padded length (a pair's target width is
    its target length + 1, for <bos>/<eos>); ``ValueError`` if one pair alone exceeds it."""
    order = np.lexsort((tgt_widths, src_widths))
    widths = np.maximum(src_widths, tgt_widths)
    batches: list[np.ndarray] = []
    start = widest = 0
    for position, index in enumerate(order):
        width = int(widths[index])
        if width > max_tokens:
            raise ValueError(f"pair {index} alone is {width} tokens wide, more than max_tokens={max_tokens}")
        widest = max(widest, width)
        if (position - start + 1) * widest > max_tokens:
            batches.append(order[start:position])
            start, widest = position, width
    if len(order):
        batches.append(order[start:])
    return batches


def _packed(rows: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """``(LongTensor[1, Σ l], LongTensor[N + 1])``: the rows end to end and their offsets."""
    lengths = [len(row) for row in rows]
    tokens = torch.from_numpy(np.concatenate(rows).astype(np.int64))[None, :]
    return tokens, cu_seqlens_from_lengths(lengths)


def _pad(rows: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """``(LongTensor[B, L], BoolTensor[B, L])``: the rows left-aligned and padded with <pad> to the longest
    length ``L``, and the mask that is True at padding."""
    lengths = torch.tensor([len(row) for row in rows])
    padded = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for b, row in enumerate(rows):
        padded[b, : len(row)] = torch.from_numpy(row.astype(np.int64))
    return padded, torch.arange(padded.shape[1]) >= lengths[:, None]


class PairBatches(Dataset):
    """Pre-packed batches of a parallel corpus; item ``i`` is batch ``i`` as the module docstring's dict.
    Without ``target`` (translating new text) a batch has only ``src``, ``src_padding_mask`` and ``ids``.
    Sources are cut to ``max_positions`` tokens, targets to ``max_positions - 1`` (plus <bos>/<eos>).
    ``packed``: the pairs of a batch end to end without padding (module docstring; every side must
    hold a token, as in the training split)."""

    def __init__(
        self,
        source: LineTokens,
        target: LineTokens | None,
        batches: list[np.ndarray],
        *,
        max_positions: int,
        packed: bool = False,
    ) -> None:
        if packed and target is None:
            raise ValueError("packed batches are for training: they need the target side")
        self.source, self.target, self.batches = source, target, batches
        self.max_positions, self.packed = max_positions, packed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = self.batches[index]
        sources = [self.source[i][: self.max_positions] for i in ids]
        if self.packed:
            return self._packed_batch(ids, sources)
        src, src_padding_mask = _pad(sources)
        batch = {
            "src": src,
            "src_padding_mask": src_padding_mask,
            "ids": torch.as_tensor(ids, dtype=torch.long),
        }
        if self.target is not None:
            targets = [self.target[i][: self.max_positions - 1] for i in ids]
            batch["tgt_in"], batch["tgt_padding_mask"] = _pad(
                [np.concatenate(([BOS_ID], t)) for t in targets]
            )
            batch["tgt_out"], _ = _pad([np.concatenate((t, [EOS_ID])) for t in targets])
        return batch

    def _packed_batch(self, ids: np.ndarray, sources: list[np.ndarray]) -> dict[str, Tensor]:
        """The pairs ``ids`` end to end (module docstring)."""
        targets = [self.target[i][: self.max_positions - 1] for i in ids]
        batch = {"ids": torch.as_tensor(ids, dtype=torch.long)}
        batch["src"], batch["src_cu_seqlens"] = _packed(sources)
        batch["tgt_in"], batch["tgt_cu_seqlens"] = _packed([np.concatenate(([BOS_ID], t)) for t in targets])
        batch["tgt_out"], _ = _packed([np.concatenate((t, [EOS_ID])) for t in targets])
        return batch


def _require_no_empty_line(name: str | Path, lines: LineTokens) -> None:
    """``DataError`` naming ``name`` (a file, or standard input) and the first empty or blank line."""
    empty = np.flatnonzero(lines.lengths == 0)
    if len(empty):
        raise DataError(
            f"{name}: line {empty[0] + 1} is empty or blank ({len(empty)} such lines in all); "
            "every line must hold a sentence"
        )


STANDARD_INPUT = "standard input (predict_file: '-')"


def save_standard_input(directory: Path) -> Path:
    """Read standard input once into ``directory/stdin-<sha256>.txt`` (``predict_file: "-"``), so that
    it can be tokenised and cached like any file; ``DataError`` if it holds no text."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    raw = stream.read()
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{STANDARD_INPUT}: line {line} is not valid UTF-8") from error
    if not text.strip():
        raise DataError(f"{STANDARD_INPUT} is empty: pipe the sentences to translate, one per line")
    path = directory / f"stdin-{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt"
    with cache_writes(directory):
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


class TranslationDataModule(CorpusDataModule):
    """Parallel-corpus translation data with a joint BPE vocabulary (module docstring).

    The BPE is learned on ``train.<src_lang>`` + ``train.<tgt_lang>``, saved beside the data and reused;
    each file is encoded once into a memory-mapped cache. ``vocab_size`` is available right after
    construction (the tokenizer is built on first access), so the CLI can link it to the model.

    Args:
        data_dir: Directory holding ``{train,valid,test}.{src_lang,tgt_lang}``, one sentence per line,
            aligned by line. ``None`` generates the synthetic corpus of ``tasks.translation.synthetic``
            (once) under ``<cache root>/synthetic``.
        src_lang: File suffix of the source side.
        tgt_lang: File suffix of the target side; a Moses language code (``de``, ``fr``, ...) picks the
            tokenisation of the tokenised BLEU (``tasks.translation.metrics``).
        bpe_vocab_size: Size of the joint byte-level BPE vocabulary (at most; fewer if the data has no
            more merges).
        max_tokens: Budget of one training batch, counted as fairseq's ``--max-tokens``: ``B × max(S,
            T)``, the number of pairs times the longer of the padded source and target widths.
        max_positions: Longest sequence: training pairs with more source tokens, or more target
            tokens + 1, are dropped; validation/test pairs are truncated (the counts are logged).
        eval_max_tokens: Budget of one validation/test/predict batch; ``None`` means ``max_tokens``.
        num_workers: DataLoader worker processes.
        seed: Seed of the per-epoch batch order (``seed + epoch``).
        cache_dir: Where the tokenizer and token caches are written. ``None``: beside the data for
            ``data_dir``; for the synthetic corpus, the cache root ``$FWP_CACHE`` or ``~/.cache/fwp``,
            which a given ``cache_dir`` replaces.
        predict_file: Source-language text to translate with ``predict`` (one sentence per line, none
            empty; sources longer than ``max_positions`` are truncated). ``None`` means the test source;
            ``"-"`` reads standard input.
        packed: Training batches without padding: the same pairs as the padded batches, laid end to end
            with their offsets (module docstring); validation, test and predict batches stay padded.
    """

    synthetic_subdir = "synthetic/translation-v1"
    synthetic_files = tuple(f"{split}.{lang}" for split in SPLITS for lang in ("src", "tgt"))
    generate_synthetic = staticmethod(write_synthetic_parallel_corpus)
    datasets: dict[str, PairBatches]

    def __init__(
        self,
        data_dir: str | None = None,
        src_lang: str = "src",
        tgt_lang: str = "tgt",
        bpe_vocab_size: int = 8000,
        max_tokens: int = 4096,
        max_positions: int = 256,
        eval_max_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        predict_file: str | None = None,
        packed: bool = False,
    ) -> None:
        super().__init__(
            data_dir=data_dir, cache_dir=cache_dir, tokenizer_kind="bpe", bpe_vocab_size=bpe_vocab_size
        )
        if src_lang == tgt_lang:
            raise ValueError(f"src_lang and tgt_lang must differ, got both {src_lang!r}")
        if max_positions < 2:
            raise ValueError(f"max_positions must be >= 2, got max_positions={max_positions}")
        for name, value in (("max_tokens", max_tokens), ("eval_max_tokens", eval_max_tokens)):
            if value is not None and value < max_positions:
                raise ValueError(
                    f"{name} must be >= max_positions = {max_positions} so that every kept pair fits in a "
                    f"batch, got {name}={value}"
                )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got num_workers={num_workers}")
        self.save_hyperparameters()
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens or max_tokens
        self.max_positions = max_positions
        self.num_workers = num_workers
        self.seed = seed
        self.predict_file = predict_file
        self.packed = packed
        self.long_pairs: dict[str, int] = {}

    def split_file(self, split: str, lang: str) -> Path:
        """Path of ``<split>.<lang>``; ``FileNotFoundError`` naming it if absent."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
        path = self.data_path / f"{split}.{lang}"
        if not path.is_file():
            raise DataFileNotFoundError(
                f"missing {split} split: no file {path} (data_dir should hold "
                f"{{train,valid,test}}.{{{self.src_lang},{self.tgt_lang}}})"
            )
        return path

    def tokenizer_files(self) -> list[Path]:
        """The training source and target: one joint BPE for both sides."""
        return [self.split_file("train", self.src_lang), self.split_file("train", self.tgt_lang)]

    @property
    def bos_id(self) -> int:
        """Id of ``<bos>``, which starts every decoder input."""
        return BOS_ID

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Detokenised text of ``ids`` up to the first <eos>, special tokens left out."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def references(self, split: str) -> list[str]:
        """The raw target lines of ``split`` (surrounding whitespace stripped), for BLEU."""
        return [line.strip() for line in text_lines(self.split_file(split, self.tgt_lang))]

    def line_tokens(self, split: str) -> tuple[LineTokens, LineTokens]:
        """Source and target token ids of ``split``, checked to be aligned and, but for ``train`` (whose
        empty pairs ``batches`` drops), free of empty lines."""
        paths = [self.split_file(split, lang) for lang in (self.src_lang, self.tgt_lang)]
        sides = [cached_line_tokens(path, self.tokenizer, cache_dir=self.cache_path) for path in paths]
        if len(sides[0]) != len(sides[1]):
            raise DataError(
                f"misaligned parallel corpus: {paths[0]} has {len(sides[0])} lines, "
                f"{paths[1]} has {len(sides[1])} lines"
            )
        if split != "train":
            for path, side in zip(paths, sides, strict=True):
                _require_no_empty_line(path, side)
        return sides[0], sides[1]

    def prepare_data(self) -> None:
        """Build the tokenizer and the token caches of every split (once per node)."""
        for split in SPLITS:
            self.line_tokens(split)

    def batches(self, split: str) -> PairBatches:
        """``split``'s pairs packed into batches; ``long_pairs[split]`` counts those longer than
        ``max_positions``, dropped from ``train`` (with the pairs that have an empty side), truncated
        elsewhere."""
        source, target = self.line_tokens(split)
        too_long = (source.lengths > self.max_positions) | (target.lengths + 1 > self.max_positions)
        self.long_pairs[split] = int(np.count_nonzero(too_long))
        training = split == "train"
        empty = (source.lengths == 0) | (target.lengths == 0)
        kept = np.flatnonzero(~(too_long | empty)) if training else np.arange(len(too_long))
        if self.long_pairs[split]:
            rank_zero_info(
                f"{split}: {'dropped' if training else 'truncated'} {self.long_pairs[split]} of "
                f"{len(too_long)} pairs longer than max_positions={self.max_positions}"
            )
        if training and empty.any():
            rank_zero_info(f"{split}: dropped {int(np.count_nonzero(empty))} pairs with an empty side")
        src_widths = np.minimum(source.lengths[kept], self.max_positions)
        tgt_widths = np.minimum(target.lengths[kept] + 1, self.max_positions)
        budget = self.max_tokens if training else self.eval_max_tokens
        if not len(kept):
            raise DataError(
                f"no training pair left in {self.split_file(split, self.src_lang)} and "
                f"{self.split_file(split, self.tgt_lang)}: all {len(too_long)} are longer than "
                f"max_positions={self.max_positions} or have an empty side"
            )
        packed = pack_batches(src_widths, tgt_widths, max_tokens=budget)
        return PairBatches(
            source,
            target,
            [kept[batch] for batch in packed],
            max_positions=self.max_positions,
            packed=self.packed and training,
        )

    def predict_batches(self) -> PairBatches:
        """The sources of ``predict_file`` (or of the test split) packed into batches without targets,
        sorted by length (the output is budgeted as wide as the source)."""
        if self.predict_file == "-":
            path, name = save_standard_input(self.cache_path), STANDARD_INPUT
        elif self.predict_file:
            path = name = Path(self.predict_file).expanduser()
            if not path.is_file():
                raise DataFileNotFoundError(f"predict_file {path} does not exist (or is not a file)")
            if path.stat().st_size == 0:
                raise DataError(f"predict_file {path} is empty: give one sentence to translate per line")
        else:
            path = name = self.split_file("test", self.src_lang)
        source = cached_line_tokens(path, self.tokenizer, cache_dir=self.cache_path)
        _require_no_empty_line(name, source)
        lengths = np.minimum(source.lengths, self.max_positions)
        truncated = int(np.count_nonzero(source.lengths > self.max_positions))
        if truncated:
            rank_zero_info(f"{name}: truncated {truncated} sources to max_positions={self.max_positions}")
        packed = pack_batches(lengths, lengths, max_tokens=self.eval_max_tokens)
        return PairBatches(source, None, packed, max_positions=self.max_positions)

    def setup(self, stage: str) -> None:
        """Pack the splits the stage needs."""
        if stage == "predict":
            self.datasets["predict"] = self.predict_batches()
        splits = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",)}.get(stage, ())
        for split in splits:
            self.datasets[split] = self.batches(split)

    def loader_options(self, split: str) -> dict[str, Any]:
        """The training batches in a new order each epoch; every split's batches dealt to the ranks."""
        rank, world_size = rank_and_world_size(self.trainer)
        return {
            "shuffle": split == "train",
            "seed": self.seed,
            "rank": rank,
            "world_size": world_size,
            "num_workers": self.num_workers,
        }

    def predict_dataloader(self) -> DataLoader:
        """A plain DataLoader: for prediction Lightning rebuilds the loader and deals batches to ranks
        without repetition itself."""
        if "predict" not in self.datasets:
            raise RuntimeError("the predict data is not set up: call setup('predict') first")
        return DataLoader(self.datasets["predict"], batch_size=None, num_workers=self.num_workers)
