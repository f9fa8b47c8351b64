"""Token caches: round trip against direct encoding, streaming in blocks, reuse, fingerprints (a stale or
damaged cache is rebuilt with a warning), lines as ``wc -l`` counts them, errors naming file and line."""

from __future__ import annotations

import json
import pickle
import re
import warnings

import numpy as np
import pytest

from fwp.data import (
    EOS_ID,
    DataError,
    StaleCacheWarning,
    cached_line_tokens,
    cached_token_stream,
    load_or_train_tokenizer,
    token_cache,
)

LINES = [
    " = Heading = ",
    " ",
    " the first line of text , with <unk> inside . ",
    "",
    " a second , longer line that goes on and on for a while . ",
    " = = Section = = ",
    " the end . ",
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_text("\n".join(LINES * 40) + "\n", encoding="utf-8")
    return path


@pytest.fixture(params=["word", "bpe"])
def tokenizer(request, corpus, tmp_path):
    vocab_size = 300 if request.param == "bpe" else None
    return load_or_train_tokenizer([corpus], kind=request.param, save_dir=tmp_path, vocab_size=vocab_size)


def direct_encoding(path, tokenizer):
    return [tokenizer.encode(line.strip()).ids for line in path.read_text(encoding="utf-8").splitlines()]


def test_stream_equals_direct_encoding_with_eos(corpus, tokenizer, tmp_path):
    stream = cached_token_stream(corpus, tokenizer, cache_dir=tmp_path / "cache")
    expected = [token for ids in direct_encoding(corpus, tokenizer) for token in [*ids, EOS_ID]]
    assert isinstance(stream, np.memmap) and stream.dtype == np.int32
    np.testing.assert_array_equal(stream, expected)
    without_eos = cached_token_stream(corpus, tokenizer, cache_dir=tmp_path / "cache", append_eos=False)
    np.testing.assert_array_equal(without_eos, [t for ids in direct_encoding(corpus, tokenizer) for t in ids])


def test_line_tokens_equal_direct_encoding(corpus, tokenizer, tmp_path):
    lines = cached_line_tokens(corpus, tokenizer, cache_dir=tmp_path)
    expected = direct_encoding(corpus, tokenizer)
    assert len(lines) == len(expected) and lines.offsets[0] == 0
    for i, ids in enumerate(expected):
        np.testing.assert_array_equal(lines[i], ids)
    np.testing.assert_array_equal(lines.lengths, [len(ids) for ids in expected])


def test_streaming_in_small_blocks_gives_the_same_arrays(corpus, tokenizer, tmp_path, monkeypatch):
    whole = cached_line_tokens(corpus, tokenizer, cache_dir=tmp_path / "whole")
    monkeypatch.setattr(token_cache, "LINES_PER_BLOCK", 3)
    monkeypatch.setattr(token_cache, "COPY_BLOCK_ITEMS", 5)
    blocks = cached_line_tokens(corpus, tokenizer, cache_dir=tmp_path / "blocks")
    np.testing.assert_array_equal(blocks.tokens, whole.tokens)
    np.testing.assert_array_equal(blocks.offsets, whole.offsets)


def test_cache_is_reused_and_leaves_no_temporary_files(corpus, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    cached_token_stream(corpus, tokenizer, cache_dir=cache)
    files = sorted(cache.iterdir())
    assert [p.suffix for p in files] == [".json", ".npy", ".npy"]
    mtimes = [p.stat().st_mtime_ns for p in files]
    cached_token_stream(corpus, tokenizer, cache_dir=cache)
    assert sorted(cache.iterdir()) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    metadata = json.loads(files[0].read_text())
    assert metadata["num_lines"] == len(LINES) * 40


def test_changed_text_or_tokenizer_gets_its_own_cache(corpus, tmp_path):
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    bpe = load_or_train_tokenizer([corpus], kind="bpe", save_dir=tmp_path, vocab_size=300)
    cache = tmp_path / "cache"
    first = cached_token_stream(corpus, word, cache_dir=cache)
    cached_token_stream(corpus, bpe, cache_dir=cache)
    corpus.write_text("the end .\n", encoding="utf-8")
    changed = cached_token_stream(corpus, word, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 3
    assert len(changed) == 4 and len(first) > 4


def only_cache(cache, pattern):
    (path,) = cache.glob(pattern)
    return path


def test_cache_recording_another_vocabulary_is_rebuilt_with_a_warning(corpus, tmp_path):
    """Before: a metadata mismatch stopped the run with 'delete the cache files'; now it is rebuilt."""
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    cache = tmp_path / "cache"
    cached_token_stream(corpus, word, cache_dir=cache)
    metadata_path = only_cache(cache, "*.json")
    metadata = json.loads(metadata_path.read_text())
    metadata["tokenizer_fingerprint"] = "f" * 64
    metadata_path.write_text(json.dumps(metadata))
    with pytest.warns(
        StaleCacheWarning, match=f"(?s){re.escape(str(metadata_path))}.*{'f' * 64}.*rebuilding"
    ):
        stream = cached_token_stream(corpus, word, cache_dir=cache)
    np.testing.assert_array_equal(
        stream, [t for ids in direct_encoding(corpus, word) for t in [*ids, EOS_ID]]
    )


@pytest.mark.parametrize("damage", ["overwritten at the same size", "truncated", "deleted"])
def test_damaged_token_array_is_rebuilt_with_a_warning(corpus, tokenizer, tmp_path, damage):
    """Before: an array overwritten at the same size was used as it was (training on garbage), a
    truncated one failed with 'mmap length is greater than file size'."""
    cache = tmp_path / "cache"
    expected = np.array(cached_line_tokens(corpus, tokenizer, cache_dir=cache).tokens)
    tokens_path = only_cache(cache, "*.tokens.npy")
    if damage == "deleted":
        tokens_path.unlink()
    else:
        array = np.load(tokens_path)
        array = np.roll(array, 1) if damage.startswith("overwritten") else array[: len(array) // 2]
        np.save(tokens_path, array)
    with pytest.warns(StaleCacheWarning, match=re.escape(str(only_cache(cache, "*.json")))):
        lines = cached_line_tokens(corpus, tokenizer, cache_dir=cache)
    np.testing.assert_array_equal(lines.tokens, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt once: the next load trusts it again
        cached_line_tokens(corpus, tokenizer, cache_dir=cache)


def test_a_line_is_what_wc_counts_and_bad_utf8_names_the_line(tmp_path):
    """A stray carriage return used to start a new line (more lines than ``wc -l`` and than the other
    side of a parallel corpus); invalid UTF-8 used to name a byte position of the file, not the line."""
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"one two\nthree\rfour\r\nfive\n")
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    lines = cached_line_tokens(corpus, word, cache_dir=tmp_path)
    assert len(lines) == 3
    assert word.decode(lines[1].tolist()) == "three four"
    corpus.write_bytes(b"fine\nstill fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=re.escape(f"{corpus}: line 3 is not valid UTF-8")):
        cached_line_tokens(corpus, word, cache_dir=tmp_path)


def test_unwritable_cache_directory_names_cache_dir(corpus, tmp_path):
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(DataError, match=f"{re.escape(str(not_a_directory))}.*cache_dir"):
        cached_line_tokens(corpus, word, cache_dir=not_a_directory / "cache")


def test_line_tokens_pickle_as_file_names(corpus, tmp_path):
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    lines = cached_line_tokens(corpus, word, cache_dir=tmp_path)
    payload = pickle.dumps(lines)
    assert len(payload) < lines.tokens.nbytes
    restored = pickle.loads(payload)
    assert isinstance(restored.tokens, np.memmap)
    np.testing.assert_array_equal(restored.tokens, lines.tokens)
    np.testing.assert_array_equal(restored.offsets, lines.offsets)


def test_missing_and_empty_text_files_are_named(corpus, tmp_path):
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    missing = tmp_path / "wiki.valid.tokens"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        cached_token_stream(missing, word, cache_dir=tmp_path)
    missing.write_text("")
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        cached_line_tokens(missing, word, cache_dir=tmp_path)
