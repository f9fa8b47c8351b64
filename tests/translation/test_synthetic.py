"""The synthetic parallel corpus: determinism, the files agree with the rules, the rules themselves."""

from __future__ import annotations

import pytest

from tasks.translation.synthetic import (
    ARTICLES,
    MAX_WORDS,
    MIN_WORDS,
    VERB_ENDINGS,
    translate_reference,
    write_synthetic_parallel_corpus,
)

SMALL = {"n_train": 300, "n_valid": 20, "n_test": 20}
GENDER_NUMBER_OF_ARTICLE = {article: (gender, number) for (_, gender, number), article in ARTICLES.items()}


def read_pairs(directory, split):
    sources = (directory / f"{split}.src").read_text(encoding="utf-8").splitlines()
    targets = (directory / f"{split}.tgt").read_text(encoding="utf-8").splitlines()
    return sources, targets


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_parallel_corpus(tmp_path / "a", **SMALL)
    b = write_synthetic_parallel_corpus(tmp_path / "b", **SMALL)
    c = write_synthetic_parallel_corpus(tmp_path / "c", seed=1, **SMALL)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["test.src", "test.tgt", "train.src", "train.tgt", "valid.src", "valid.tgt"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_files_follow_the_reference_translation(tmp_path):
    write_synthetic_parallel_corpus(tmp_path, **SMALL)
    for split, size in (("train", 300), ("valid", 20), ("test", 20)):
        sources, targets = read_pairs(tmp_path, split)
        assert len(sources) == len(targets) == size
        for source, target in zip(sources, targets, strict=True):
            assert MIN_WORDS <= len(source.split()) <= MAX_WORDS
            assert translate_reference(source) == target


def test_verb_agrees_with_the_subject_in_the_files(tmp_path):
    """Checked on the text alone: the last word (the verb) ends in the ending of the subject's gender and
    number, read off the first word (its article), in sentences with one predicate."""
    write_synthetic_parallel_corpus(tmp_path, **SMALL)
    _, targets = read_pairs(tmp_path, "train")
    simple = [target[:-1].split() for target in targets if " kaj " not in target]
    assert len(simple) > 100
    for words in simple:
        gender, number = GENDER_NUMBER_OF_ARTICLE[words[0].lower()]
        endings = {ending for ending in VERB_ENDINGS.values() if words[-1].endswith(ending)}
        assert endings == {VERB_ENDINGS[gender, number]}, words


@pytest.mark.parametrize(
    ("source", "target"),
    [
        # SOV, adjectives after the noun, feminine object "mira", masculine subject "hundo".
        (
            "The big dog sees a small cat near the river.",
            "Lo hundo grando una mira pikla apud la fluvo vidat.",
        ),
        # Plural feminine subject: article, plural noun, adjective and both verbs agree.
        ("Some old queens sleep and like an apple.", "Unas reginaen vetraj dormeton kaj un pomo ameton."),
        ("A horse runs.", "Un kavalo kurat."),
    ],
)
def test_reference_rules(source, target):
    assert translate_reference(source) == target


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("The dogs sees a cat.", "agreeing with a plural subject"),
        ("A dogs run.", "agreeing with 'a'"),
        ("The dog sleeps the cat.", "end of the sentence"),
        ("the dog sleeps.", "capitalised"),
        ("The dog flies.", "a verb"),
    ],
)
def test_sentences_outside_the_grammar_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        translate_reference(source)


def test_bad_size_is_named(tmp_path):
    with pytest.raises(ValueError, match="n_test"):
        write_synthetic_parallel_corpus(tmp_path, n_test=0)
