"""Vocabularies built with Hugging Face ``tokenizers``, trained once and saved as JSON beside the data.

Every vocabulary starts with ``SPECIAL_TOKENS`` at ids 0, 1, 2, 3. Two kinds:

- ``word``: WikiText-103 style. Lines are split on whitespace only; the vocabulary is every word of the
  training files (or the ``vocab_size - 4`` most frequent ones) with at least ``min_frequency``
  occurrences, ordered by decreasing count then by the word itself (the order adaptive softmax cutoffs
  assume, and deterministic). The corpus' own ``<unk>`` is our ``<unk>``; unseen words map to it.
- ``bpe``: byte-level BPE (GPT-2 style: 256 byte symbols, no unknown input). Its decoder inverts the
  encoding exactly, ``decode(encode(x).ids) == x``, as detokenised BLEU needs.

The file name ``tokenizer-{kind}-{vocab_size|full}-{key}.json`` carries a hash ``key`` of the kind, the
settings and the SHA-256 of each training file, so a second call with the same inputs loads the file
instead of training again, and any change of data or settings gets a new file. Beside it,
``<same name>.fingerprint`` (JSON) records those inputs and the tokenizer file's size and SHA-256
(``fwp.data.fingerprint``); a tokenizer file that no longer matches (truncated, overwritten) is trained
again with a ``StaleCacheWarning``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fwp.data.files import DataError, atomic_output, file_sha256, text_lines, text_sha256, undecodable_line
from fwp.data.fingerprint import ensure_built

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_KINDS = ("word", "bpe")
BYTE_ALPHABET_SIZE = 256
FORMAT_VERSION = 2


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON serialisation: equal for equal vocabularies, rules and settings."""
    return text_sha256(tokenizer.to_str())


def _validate_request(kind: str, vocab_size: int | None, min_frequency: int) -> None:
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got kind={kind!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got min_frequency={min_frequency}")
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("kind='bpe' needs vocab_size (the number of BPE tokens), got vocab_size=None")
        smallest = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
        if vocab_size < smallest:
            raise ValueError(
                f"byte-level BPE needs vocab_size >= {smallest} (4 special tokens + 256 bytes), "
                f"got vocab_size={vocab_size}"
            )
    elif vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")


def _training_inputs(
    files: Sequence[Path], *, kind: str, vocab_size: int | None, min_frequency: int
) -> dict[str, object]:
    """What a tokenizer is a function of: format, kind, settings, the training files' SHA-256."""
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "files_sha256": [file_sha256(Path(f)) for f in files],
    }


def tokenizer_path(
    files: Sequence[Path], *, kind: str, save_dir: Path, vocab_size: int | None, min_frequency: int
) -> Path:
    """Where ``load_or_train_tokenizer`` saves the tokenizer of these files and settings."""
    inputs = _training_inputs(files, kind=kind, vocab_size=vocab_size, min_frequency=min_frequency)
    key = text_sha256(json.dumps(inputs, sort_keys=True))[:16]
    size = "full" if vocab_size is None else str(vocab_size)
    return Path(save_dir) / f"tokenizer-{kind}-{size}-{key}.json"


def count_words(files: Sequence[Path]) -> Counter[str]:
    """Occurrences of every whitespace-separated word in ``files``, read line by line."""
    counts: Counter[str] = Counter()
    for path in files:
        for line in text_lines(path):
            counts.update(line.split())
    return counts


def train_word_tokenizer(files: Sequence[Path], *, vocab_size: int | None, min_frequency: int) -> Tokenizer:
    """Word-level tokenizer: special tokens, then words by decreasing count (ties by the word)."""
    counts = count_words(files)
    words = sorted(
        (word for word, n in counts.items() if n >= min_frequency and word not in SPECIAL_TOKENS),
        key=lambda word: (-counts[word], word),
    )
    if vocab_size is not None:
        words = words[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def train_bpe_tokenizer(files: Sequence[Path], *, vocab_size: int, min_frequency: int) -> Tokenizer:
    """Byte-level BPE tokenizer with at most ``vocab_size`` tokens (fewer if the data has no more merges)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    try:
        tokenizer.train([str(f) for f in files], trainer)
    except Exception as error:  # the Rust trainer raises a bare Exception, e.g. on invalid UTF-8
        raise next(filter(None, map(undecodable_line, files)), error) from error
    return tokenizer


def check_special_ids(tokenizer: Tokenizer, source: Path) -> None:
    """``ValueError`` unless ``SPECIAL_TOKENS`` have ids 0..3 in ``tokenizer`` (read from ``source``)."""
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise DataError(f"{source}: special tokens {SPECIAL_TOKENS} must have ids 0..3, found ids {ids}")


def load_or_train_tokenizer(
    files: Sequence[Path],
    *,
    kind: Literal["word", "bpe"],
    save_dir: Path,
    vocab_size: int | None = None,
    min_frequency: int = 1,
) -> Tokenizer:
    """The tokenizer of ``files`` (training text) saved in ``save_dir``; trained and saved on first use.

    ``vocab_size``: required for ``bpe``; for ``word``, ``None`` keeps every word. Missing or empty
    training files raise ``FileNotFoundError`` / ``ValueError`` naming the path.
    """
    _validate_request(kind, vocab_size, min_frequency)
    if not files:
        raise ValueError("files must name at least one training text file, got none")
    path = tokenizer_path(
        files, kind=kind, save_dir=save_dir, vocab_size=vocab_size, min_frequency=min_frequency
    )

    def train() -> dict[str, object]:
        if kind == "word":
            tokenizer = train_word_tokenizer(files, vocab_size=vocab_size, min_frequency=min_frequency)
        else:
            tokenizer = train_bpe_tokenizer(files, vocab_size=vocab_size, min_frequency=min_frequency)
        with atomic_output(path) as temporary:
            tokenizer.save(str(temporary))
        return {"training_files": [str(f) for f in files]}

    inputs = _training_inputs(files, kind=kind, vocab_size=vocab_size, min_frequency=min_frequency)
    ensure_built(path.with_name(path.name + ".fingerprint"), inputs, (path,), train, what="tokenizer")
    # Everyone (e.g. every DDP rank that trained concurrently) uses the one file that won the rename.
    tokenizer = Tokenizer.from_file(str(path))
    check_special_ids(tokenizer, path)
    return tokenizer
