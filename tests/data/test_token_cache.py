"""Token caches: round trip against direct encoding, streaming in blocks, reuse, vocabulary checks."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from fwp.data import EOS_ID, cached_line_tokens, cached_token_stream, load_or_train_tokenizer, token_cache

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


def test_cache_of_another_vocabulary_is_refused(corpus, tmp_path):
    word = load_or_train_tokenizer([corpus], kind="word", save_dir=tmp_path)
    cache = tmp_path / "cache"
    cached_token_stream(corpus, word, cache_dir=cache)
    (metadata_path,) = cache.glob("*.json")
    metadata = json.loads(metadata_path.read_text())
    ours = metadata["tokenizer_fingerprint"]
    metadata["tokenizer_fingerprint"] = "f" * 64
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=f"(?s){'f' * 64}.*{ours}.*delete"):
        cached_token_stream(corpus, word, cache_dir=cache)


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
