"""Binarised token files: a text file encoded once, stored as memory-mapped int32 ``.npy`` arrays.

A cache lives in ``cache_dir`` under a name keyed by the SHA-256 of the raw file's bytes and the
tokenizer's fingerprint, so another vocabulary or edited text gets its own cache. A metadata JSON beside
it is the cache's fingerprint (``fwp.data.fingerprint``): it records both in full, the numbers of lines
and tokens, and the size and SHA-256 of both arrays, and is checked on every load; a cache that
disagrees (truncated, overwritten, copied or edited by hand) is rebuilt with a ``StaleCacheWarning``.
Lines end at ``\\n`` only (``fwp.data.files.text_lines``: line ``i`` is ``wc -l``'s line ``i``) and are
stripped of surrounding whitespace before encoding. Lines are encoded in blocks with ``encode_batch``
and streamed to disk, so memory stays bounded for corpora of any size.

Both layouts store ``tokens: int32 [N]`` and ``offsets: int64 [n_lines + 1]``, line ``i`` being
``tokens[offsets[i]:offsets[i + 1]]``:

- token stream (language modelling): every line's tokens followed by ``<eos>`` (empty lines contribute
  just ``<eos>``), as the WikiText-103 Transformer-XL code does; used as one flat stream.
- line tokens (parallel corpora): the lines' tokens without separators, used line by line.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from fwp.data.files import atomic_output, file_sha256, require_nonempty_file, text_lines, text_sha256
from fwp.data.fingerprint import ensure_built
from fwp.data.tokenizer import EOS_ID, tokenizer_fingerprint

CACHE_FORMAT = 2
LINES_PER_BLOCK = 8192
COPY_BLOCK_ITEMS = 1 << 24


@dataclass(frozen=True)
class LineTokens:
    """Ragged token ids of a text file's lines: line ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

    ``tokens: int32 [N]`` and ``offsets: int64 [n_lines + 1]`` are read-only memmaps. Pickling (spawned
    DataLoader workers) sends the file names and reopens them instead of copying the arrays.
    """

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, line: int) -> np.ndarray:
        return self.tokens[self.offsets[line] : self.offsets[line + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each line, ``int64 [n_lines]``."""
        return np.diff(self.offsets)

    def __reduce__(self) -> tuple[Any, ...]:
        return _open_line_tokens, (str(self.tokens.filename), str(self.offsets.filename))


def _open_line_tokens(tokens_path: str, offsets_path: str) -> LineTokens:
    return LineTokens(np.load(tokens_path, mmap_mode="r"), np.load(offsets_path, mmap_mode="r"))


def _line_blocks(text_file: Path) -> Iterator[list[str]]:
    lines = text_lines(text_file)
    while block := [line.strip() for line in islice(lines, LINES_PER_BLOCK)]:
        yield block


def _encode_to_raw(
    text_file: Path, tokenizer: Tokenizer, tokens_raw: Path, offsets_raw: Path, *, append_eos: bool
) -> tuple[int, int]:
    """Encode ``text_file`` block by block into raw ``int32`` tokens and ``int64`` line offsets (starting
    with 0); return the numbers of tokens and lines."""
    num_tokens = num_lines = 0
    with open(tokens_raw, "wb") as tokens_out, open(offsets_raw, "wb") as offsets_out:
        np.zeros(1, dtype=np.int64).tofile(offsets_out)
        for block in _line_blocks(text_file):
            encodings = tokenizer.encode_batch(block, add_special_tokens=False)
            lines = [[*encoding.ids, EOS_ID] if append_eos else encoding.ids for encoding in encodings]
            lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
            tokens = np.fromiter(
                (i for line in lines for i in line), dtype=np.int32, count=int(lengths.sum())
            )
            tokens.tofile(tokens_out)
            (num_tokens + np.cumsum(lengths)).tofile(offsets_out)
            num_tokens += len(tokens)
            num_lines += len(lines)
    return num_tokens, num_lines


def _raw_to_npy(raw: Path, npy: Path, dtype: type[np.integer], count: int) -> None:
    """Copy ``count`` items of a raw array file into an ``.npy`` file, block by block, atomically."""
    source = (
        np.fromfile(raw, dtype=dtype, count=0) if count == 0 else np.memmap(raw, dtype, "r", shape=(count,))
    )
    with atomic_output(npy) as temporary:
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=(count,))
        for start in range(0, count, COPY_BLOCK_ITEMS):
            target[start : start + COPY_BLOCK_ITEMS] = source[start : start + COPY_BLOCK_ITEMS]
        target.flush()
        del target


def _expected_metadata(text_file: Path, tokenizer: Tokenizer, *, append_eos: bool) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "append_eos": append_eos,
        "source_sha256": file_sha256(text_file),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }


def _cache_stem(text_file: Path, cache_dir: Path, expected: dict[str, Any]) -> Path:
    key = text_sha256(json.dumps(expected, sort_keys=True))[:16]
    return Path(cache_dir) / f"{text_file.name}.{key}"


def _build_or_open(
    text_file: Path, tokenizer: Tokenizer, cache_dir: Path, *, append_eos: bool
) -> tuple[Path, Path]:
    """Paths of the cached tokens and line offsets, built first if missing, stale or corrupt."""
    text_file = require_nonempty_file(Path(text_file))
    expected = _expected_metadata(text_file, tokenizer, append_eos=append_eos)
    stem = _cache_stem(text_file, cache_dir, expected)
    tokens_path, offsets_path, metadata_path = (
        stem.with_name(stem.name + suffix) for suffix in (".tokens.npy", ".offsets.npy", ".json")
    )

    def build() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fwp-build-") as scratch:
            tokens_raw, offsets_raw = Path(scratch) / "tokens.raw", Path(scratch) / "offsets.raw"
            num_tokens, num_lines = _encode_to_raw(
                text_file, tokenizer, tokens_raw, offsets_raw, append_eos=append_eos
            )
            _raw_to_npy(tokens_raw, tokens_path, np.int32, num_tokens)
            _raw_to_npy(offsets_raw, offsets_path, np.int64, num_lines + 1)
        return {"source": str(text_file), "num_tokens": num_tokens, "num_lines": num_lines}

    ensure_built(metadata_path, expected, (tokens_path, offsets_path), build, what="token cache")
    return tokens_path, offsets_path


def cached_token_stream(
    text_file: Path, tokenizer: Tokenizer, *, cache_dir: Path, append_eos: bool = True
) -> np.ndarray:
    """``int32 [N]`` read-only memmap: every line's tokens, each line followed by ``<eos>`` if
    ``append_eos``. Built on the first call, reused after; see the module docstring."""
    tokens_path, _ = _build_or_open(text_file, tokenizer, cache_dir, append_eos=append_eos)
    return np.load(tokens_path, mmap_mode="r")


def cached_line_tokens(text_file: Path, tokenizer: Tokenizer, *, cache_dir: Path) -> LineTokens:
    """The file's lines as ragged token ids (no special tokens added). Built on the first call, reused
    after."""
    tokens_path, offsets_path = _build_or_open(text_file, tokenizer, cache_dir, append_eos=False)
    return _open_line_tokens(str(tokens_path), str(offsets_path))
