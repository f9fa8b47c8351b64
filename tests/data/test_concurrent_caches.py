"""Processes that build the same tokenizer and token cache at the same instant (DDP ranks, jobs sharing
a cache directory) all get the same complete files, no warning, and leave no temporary file behind."""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

import numpy as np

from fwp.data import cached_line_tokens, load_or_train_tokenizer

PROCESSES = 4


def build(corpus: str, cache: str, start, results) -> None:
    """In a worker: wait for the common start, build (or load) tokenizer and cache, put the tokens and
    the number of warnings seen on ``results``."""
    start.wait()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tokenizer = load_or_train_tokenizer([Path(corpus)], kind="bpe", save_dir=Path(cache), vocab_size=300)
        lines = cached_line_tokens(Path(corpus), tokenizer, cache_dir=Path(cache))
        results.put((np.asarray(lines.tokens).tolist(), len(seen)))


def test_simultaneous_builds_agree_and_leave_complete_files(tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(f"sentence number {i} with some words in it .\n" for i in range(1000)))
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    start, queue = context.Event(), context.Queue()
    workers = [
        context.Process(target=build, args=(str(corpus), str(cache), start, queue)) for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    start.set()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    assert all(tokens == results[0][0] for tokens, _ in results) and len(results[0][0]) > 1000
    assert [warned for _, warned in results] == [0] * PROCESSES
    assert not [path.name for path in cache.iterdir() if path.name.startswith(".")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what the race left behind matches its fingerprints
        tokenizer = load_or_train_tokenizer([corpus], kind="bpe", save_dir=cache, vocab_size=300)
        np.testing.assert_array_equal(
            cached_line_tokens(corpus, tokenizer, cache_dir=cache).tokens, results[0][0]
        )
