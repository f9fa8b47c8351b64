"""Vocabularies: special ids, WikiText word vocabulary, byte-level BPE round trip, reuse, errors."""

from __future__ import annotations

import re

import pytest

from fwp.data import (
    SPECIAL_TOKENS,
    UNK_ID,
    DataError,
    StaleCacheWarning,
    load_or_train_tokenizer,
    tokenizer_fingerprint,
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Ein Mädchen überquert die Straße, während es regnet!",
    "  two  spaces,\ttab and trailing space ",
    "Prices: 3.50 € (approx.) — \"quoted\" and 'single' [brackets] 100%",
    "日本語のテキストも大丈夫です。",
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_word_vocabulary_is_every_train_word_by_count(tmp_path):
    train = write(tmp_path / "train.txt", " = Title = \n the cat <unk> the dog \n\n a dog the bird \n")
    tokenizer = load_or_train_tokenizer([train], kind="word", save_dir=tmp_path)
    vocab = tokenizer.get_vocab()
    assert [vocab[token] for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    # counts: the 3, dog 2, = 2, then 1 each in lexicographic order
    words = sorted(vocab, key=vocab.get)[len(SPECIAL_TOKENS) :]
    assert words == ["the", "=", "dog", "Title", "a", "bird", "cat"]
    assert tokenizer.encode("the cat <unk> unseen").ids == [vocab["the"], vocab["cat"], UNK_ID, UNK_ID]


def test_word_vocab_size_keeps_most_frequent_and_min_frequency_filters(tmp_path):
    train = write(tmp_path / "train.txt", "a a a b b c\n")
    top = load_or_train_tokenizer([train], kind="word", save_dir=tmp_path, vocab_size=6)
    assert sorted(top.get_vocab(), key=top.get_vocab().get)[4:] == ["a", "b"]
    frequent = load_or_train_tokenizer([train], kind="word", save_dir=tmp_path, min_frequency=2)
    assert frequent.get_vocab_size() == 6 and frequent.token_to_id("c") is None


def test_bpe_round_trip_and_special_ids(tmp_path):
    train = write(tmp_path / "train.txt", "\n".join(SENTENCES * 3) + "\n")
    tokenizer = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=400)
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tokenizer.get_vocab_size() <= 400
    for text in (*SENTENCES, "Unseen wörds: zebra-crossing, 42!"):
        ids = tokenizer.encode(text).ids
        assert UNK_ID not in ids
        assert tokenizer.decode(ids) == text


def test_tokenizer_is_saved_once_and_reused(tmp_path):
    train = write(tmp_path / "train.txt", "\n".join(SENTENCES) + "\n")
    first = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    (saved,) = tmp_path.glob("tokenizer-bpe-300-*.json")
    mtime = saved.stat().st_mtime_ns
    second = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    assert saved.stat().st_mtime_ns == mtime
    assert tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
    # New content gets a new file; the old one is left alone.
    write(train, "\n".join(reversed(SENTENCES)) + " more\n")
    load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    assert len(list(tmp_path.glob("tokenizer-bpe-300-*.json"))) == 2


def test_bpe_training_is_deterministic(tmp_path):
    train = write(tmp_path / "train.txt", "\n".join(SENTENCES * 2) + "\n")
    a = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path / "a", vocab_size=350)
    b = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path / "b", vocab_size=350)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def test_fingerprint_tells_vocabularies_apart(tmp_path):
    train = write(tmp_path / "train.txt", "\n".join(SENTENCES) + "\n")
    word = load_or_train_tokenizer([train], kind="word", save_dir=tmp_path)
    bpe = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    assert tokenizer_fingerprint(word) != tokenizer_fingerprint(bpe)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bpe"}, "vocab_size"),
        ({"kind": "bpe", "vocab_size": 100}, "vocab_size >= 260"),
        ({"kind": "chars"}, "kind must be one of"),
        ({"kind": "word", "min_frequency": 0}, "min_frequency"),
    ],
)
def test_bad_settings_are_named(tmp_path, kwargs, message):
    train = write(tmp_path / "train.txt", "a b c\n")
    with pytest.raises(ValueError, match=message):
        load_or_train_tokenizer([train], save_dir=tmp_path, **kwargs)


def test_missing_and_empty_training_files_are_named(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_or_train_tokenizer([missing], kind="word", save_dir=tmp_path)
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match="empty.*" + re.escape(str(empty))):
        load_or_train_tokenizer([empty], kind="word", save_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "replaced by another vocabulary"])
def test_damaged_tokenizer_file_is_trained_again_with_a_warning(tmp_path, damage):
    """Before: a truncated tokenizer JSON failed with 'EOF while parsing'; a replaced one was used."""
    train = write(tmp_path / "train.txt", "\n".join(SENTENCES) + "\n")
    first = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    (saved,) = tmp_path.glob("tokenizer-bpe-300-*.json")
    if damage == "truncated":
        saved.write_text(saved.read_text()[:100])
    else:
        other = load_or_train_tokenizer([train], kind="word", save_dir=tmp_path / "other")
        saved.write_text(other.to_str())
    with pytest.warns(StaleCacheWarning, match=f"tokenizer {re.escape(str(saved))}.fingerprint"):
        again = load_or_train_tokenizer([train], kind="bpe", save_dir=tmp_path, vocab_size=300)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(first)


def test_invalid_utf8_training_text_names_file_and_line(tmp_path):
    """Before: the BPE trainer said only 'stream did not contain valid UTF-8'."""
    train = tmp_path / "train.txt"
    train.write_bytes("\n".join(SENTENCES).encode() + b"\nbad \xc3\x28 sequence\n")
    for kind, vocab_size in (("bpe", 300), ("word", None)):
        with pytest.raises(DataError, match=re.escape(f"{train}: line {len(SENTENCES) + 1} is not valid")):
            load_or_train_tokenizer([train], kind=kind, save_dir=tmp_path, vocab_size=vocab_size)
