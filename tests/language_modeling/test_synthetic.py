"""The synthetic WikiText-like corpus: layout, determinism, and agreement in every sentence.

Agreement is checked by a parser written from the grammar's description, independent of the generator:
subjects are pushed on a stack (at the start of a sentence and after ``that``), each verb pops its
subject and must agree in number, reflexives agree with the subject of their clause, and the pronoun of
a second clause agrees with the main subject in number and gender.
"""

from __future__ import annotations

import re

import pytest

from tasks.language_modeling.synthetic import (
    ADJECTIVES,
    CONJUNCTIONS,
    COPULA,
    DETERMINERS,
    INTRANSITIVE_VERBS,
    NOUNS,
    PREPOSITIONS,
    PRONOUNS,
    RELATIVE_MARKER,
    TRANSITIVE_VERBS,
    write_synthetic_corpus,
)

NOUN_FEATURES = {
    form: (number, gender)
    for singular, plural, gender in NOUNS
    for form, number in ((singular, "singular"), (plural, "plural"))
}
VERB_NUMBER = {
    form: number
    for singular, plural in (*TRANSITIVE_VERBS, *INTRANSITIVE_VERBS, COPULA)
    for form, number in ((singular, "singular"), (plural, "plural"))
}
SUBJECT_PRONOUNS = {subject: key for key, (subject, _) in PRONOUNS.items() if key[0] == "singular"}
REFLEXIVES = {reflexive: key for key, (_, reflexive) in PRONOUNS.items() if key[0] == "singular"}
SUBJECT_PRONOUNS["they"] = REFLEXIVES["themselves"] = ("plural", None)
ALL_DETERMINERS = {*DETERMINERS["singular"], *DETERMINERS["plural"]}
OTHER_WORDS = {*ADJECTIVES, *PREPOSITIONS, *CONJUNCTIONS, ",", "."}
SMALL = {"train_lines": 60, "valid_lines": 10, "test_lines": 10}


def agreement_errors(sentence: list[str]) -> tuple[list[str], int]:
    """Violations in one sentence, and how many main verbs follow a noun of the other number."""
    errors, attracted = [], 0
    stack, main, last_subject, last_noun = [], None, None, None
    expect_subject, determiner = True, None
    for position, token in enumerate(sentence):
        where = f"{token!r} at {position} in {' '.join(sentence)!r}"
        if token in ALL_DETERMINERS:
            determiner = token
        elif token in NOUN_FEATURES:
            number, gender = NOUN_FEATURES[token]
            if determiner not in DETERMINERS[number]:
                errors.append(f"determiner {determiner!r} does not agree with {where}")
            if expect_subject:
                stack.append((number, gender))
                main = main or (number, gender)
                expect_subject = False
            determiner, last_noun = None, (number, gender)
        elif token in VERB_NUMBER:
            if not stack:
                errors.append(f"verb without subject: {where}")
                continue
            last_subject = stack.pop()
            if VERB_NUMBER[token] != last_subject[0]:
                errors.append(f"verb disagrees with its subject {last_subject}: {where}")
            attracted += not stack and last_noun[0] != VERB_NUMBER[token]
        elif token in REFLEXIVES:
            number, gender = REFLEXIVES[token]
            if last_subject is None or number != last_subject[0] or gender not in (None, last_subject[1]):
                errors.append(f"reflexive disagrees with its subject {last_subject}: {where}")
        elif token in SUBJECT_PRONOUNS:
            number, gender = SUBJECT_PRONOUNS[token]
            if number != main[0] or gender not in (None, main[1]):
                errors.append(f"pronoun disagrees with the main subject {main}: {where}")
            stack.append(main)
        elif token == RELATIVE_MARKER:
            expect_subject = True
        elif token not in OTHER_WORDS:
            errors.append(f"unknown word {where}")
    if stack:
        errors.append(f"subjects without verbs {stack} in {' '.join(sentence)!r}")
    return errors, attracted


def sentences(path):
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith(" = "):
            words = line.split()
            while words:
                end = words.index(".") + 1
                yield words[:end]
                words = words[end:]


def test_layout_is_wikitext(tmp_path):
    write_synthetic_corpus(tmp_path, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "wiki.test.tokens",
        "wiki.train.tokens",
        "wiki.valid.tokens",
    ]
    lines = (tmp_path / "wiki.train.tokens").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert all(line.startswith(" ") and line.endswith(" ") for line in lines)
    headings = [line for line in lines if line.startswith(" = ")]
    assert all(re.fullmatch(r" (= )+[a-z ]+ (= )+", line) for line in headings)
    assert any(line.startswith(" = = ") for line in headings)
    paragraphs = [line for line in lines if line.strip() and line not in headings]
    assert len(paragraphs) == SMALL["train_lines"]
    assert all(line == " " for line in lines[::2])  # blank lines between all others


def test_deterministic_for_a_seed(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", **SMALL)
    b = write_synthetic_corpus(tmp_path / "b", **SMALL)
    c = write_synthetic_corpus(tmp_path / "c", seed=1, **SMALL)
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    assert (a / "wiki.valid.tokens").read_bytes() != (a / "wiki.test.tokens").read_bytes()


def test_every_sentence_agrees_and_memory_is_needed(tmp_path):
    write_synthetic_corpus(tmp_path, train_lines=300, valid_lines=1, test_lines=1)
    all_sentences = list(sentences(tmp_path / "wiki.train.tokens"))
    errors, attracted = [], 0
    for sentence in all_sentences:
        sentence_errors, sentence_attracted = agreement_errors(sentence)
        errors += sentence_errors
        attracted += sentence_attracted
    assert errors == []
    assert len(all_sentences) > 1000
    # The main verb often follows a noun of the other number: a bigram model cannot get it right.
    assert attracted > 0.1 * len(all_sentences)
    long_range = sum(RELATIVE_MARKER in sentence for sentence in all_sentences)
    assert long_range > 0.3 * len(all_sentences)


def test_vocabulary_is_small(tmp_path):
    write_synthetic_corpus(tmp_path, **SMALL)
    words = set((tmp_path / "wiki.train.tokens").read_text(encoding="utf-8").split())
    assert 100 <= len(words) <= 300


def test_bad_size_is_named(tmp_path):
    with pytest.raises(ValueError, match="valid_lines"):
        write_synthetic_corpus(tmp_path, valid_lines=0)
