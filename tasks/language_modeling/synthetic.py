"""A synthetic WikiText-like corpus from a stochastic grammar with long-range agreement.

Each sentence has a subject noun phrase whose number (singular/plural) and gender (masculine, feminine,
neuter) are drawn first. Between the subject and its verb come optional adjectives, a prepositional
phrase with a distractor noun, and object-gap relative clauses nested up to two deep
("the king near the towers that the girls that the priest sees admire ..."): each relative clause's
verb agrees with its own subject, and the main verb agrees with the main subject, many tokens later.
The verb phrase may end in a reflexive (``himself``/``herself``/``itself``/``themselves``) agreeing in
number and gender with its clause's subject, and a second clause (", and he ...") refers back to the
main subject with an agreeing pronoun. Articles have a topic noun that recurs across their sentences.
So a model with memory predicts verbs, reflexives and pronouns that a unigram or bigram model cannot.

Files follow WikiText-103's ``wiki.{train,valid,test}.tokens`` layout: every line starts with a space
and ends with `` \\n``; heading lines `` = title = `` and `` = = section = = ``; blank lines `` ``
between; one paragraph per line, tokens separated by single spaces. The vocabulary has about 200 words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from fwp.data.files import write_lines_atomic

SPLIT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}

# singular, plural, gender
NOUNS = (
    *(
        (singular, plural, "masculine")
        for singular, plural in (
            ("king", "kings"), ("man", "men"), ("boy", "boys"), ("father", "fathers"),
            ("brother", "brothers"), ("priest", "priests"), ("soldier", "soldiers"),
            ("farmer", "farmers"), ("prince", "princes"), ("duke", "dukes"),
        )
    ),
    *(
        (singular, plural, "feminine")
        for singular, plural in (
            ("queen", "queens"), ("woman", "women"), ("girl", "girls"), ("mother", "mothers"),
            ("sister", "sisters"), ("nun", "nuns"), ("princess", "princesses"),
            ("duchess", "duchesses"), ("widow", "widows"), ("bride", "brides"),
        )
    ),
    *(
        (singular, plural, "neuter")
        for singular, plural in (
            ("house", "houses"), ("river", "rivers"), ("tower", "towers"), ("ship", "ships"),
            ("stone", "stones"), ("city", "cities"), ("book", "books"), ("tree", "trees"),
            ("bridge", "bridges"), ("machine", "machines"),
        )
    ),
)  # fmt: skip
# singular (third person) form, plural form
TRANSITIVE_VERBS = (
    ("sees", "see"), ("follows", "follow"), ("admires", "admire"), ("fears", "fear"),
    ("watches", "watch"), ("praises", "praise"), ("remembers", "remember"), ("avoids", "avoid"),
    ("finds", "find"), ("visits", "visit"), ("describes", "describe"), ("guards", "guard"),
)  # fmt: skip
INTRANSITIVE_VERBS = (
    ("sleeps", "sleep"), ("waits", "wait"), ("falls", "fall"), ("stays", "stay"),
    ("smiles", "smile"), ("returns", "return"), ("rests", "rest"), ("shines", "shine"),
)  # fmt: skip
COPULA = ("is", "are")
ADJECTIVES = (
    "old", "young", "tall", "small", "quiet", "bright", "dark", "famous", "strange", "ancient",
    "heavy", "gentle", "proud", "silent", "distant", "golden", "broken", "hidden", "narrow", "wide",
    "busy", "calm", "cold", "warm", "green", "red", "white", "grey", "lonely", "noble",
)  # fmt: skip
PREPOSITIONS = ("near", "behind", "beside", "above", "under", "beyond")
DETERMINERS = {"singular": ("the", "this", "every", "one"), "plural": ("the", "these", "many", "some")}
PRONOUNS = {
    ("singular", "masculine"): ("he", "himself"),
    ("singular", "feminine"): ("she", "herself"),
    ("singular", "neuter"): ("it", "itself"),
    **{("plural", gender): ("they", "themselves") for gender in ("masculine", "feminine", "neuter")},
}
CONJUNCTIONS = ("and", "but", "because", "so")
RELATIVE_MARKER = "that"
SECTION_NAMES = ("history", "description", "legacy", "events", "geography", "reception")

MAX_RELATIVE_DEPTH = 2
RELATIVE_CLAUSE_PROBABILITY = (0.45, 0.3)
TOPIC_PROBABILITY = 0.35


@dataclass(frozen=True)
class Referent:
    """Agreement features of a noun phrase or pronoun."""

    number: str
    gender: str


class SentenceGrammar:
    """Draws sentences (token lists) from the grammar of the module docstring with one ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def noun_phrase(
        self, *, topic: int | None, modifiers: bool, depth: int = 0
    ) -> tuple[list[str], Referent]:
        """``det adj* noun [prep det adj* noun] [that NP verb]``; relative clauses only if ``modifiers``."""
        rng = self.rng
        index = topic if topic is not None and rng.random() < TOPIC_PROBABILITY else rng.randrange(len(NOUNS))
        singular, plural, gender = NOUNS[index]
        number = rng.choice(("singular", "plural"))
        adjectives = rng.sample(ADJECTIVES, k=rng.choice((0, 0, 1, 1, 2)))
        tokens = [rng.choice(DETERMINERS[number]), *adjectives, singular if number == "singular" else plural]
        if modifiers and rng.random() < 0.25:
            tokens += [rng.choice(PREPOSITIONS), *self.noun_phrase(topic=None, modifiers=False)[0]]
        if modifiers and depth < MAX_RELATIVE_DEPTH and rng.random() < RELATIVE_CLAUSE_PROBABILITY[depth]:
            inner, inner_referent = self.noun_phrase(topic=topic, modifiers=True, depth=depth + 1)
            tokens += [RELATIVE_MARKER, *inner, self.verb(TRANSITIVE_VERBS, inner_referent)]
        return tokens, Referent(number, gender)

    def verb(self, forms: tuple[tuple[str, str], ...], subject: Referent) -> str:
        """A verb of ``forms`` in the form agreeing with ``subject``."""
        singular, plural = self.rng.choice(forms)
        return singular if subject.number == "singular" else plural

    def verb_phrase(self, subject: Referent, *, topic: int | None) -> list[str]:
        """Transitive verb + object or reflexive, intransitive verb [+ place], or copula + adjective."""
        rng = self.rng
        kind = rng.choice(("object", "object", "reflexive", "intransitive", "copula"))
        if kind == "copula":
            return [COPULA[subject.number == "plural"], rng.choice(ADJECTIVES)]
        if kind == "intransitive":
            tokens = [self.verb(INTRANSITIVE_VERBS, subject)]
            if rng.random() < 0.5:
                tokens += [rng.choice(PREPOSITIONS), *self.noun_phrase(topic=topic, modifiers=False)[0]]
            return tokens
        verb = self.verb(TRANSITIVE_VERBS, subject)
        if kind == "reflexive":
            return [verb, PRONOUNS[subject.number, subject.gender][1]]
        return [verb, *self.noun_phrase(topic=topic, modifiers=False)[0]]

    def sentence(self, *, topic: int | None) -> list[str]:
        """``NP VP [, conj pronoun VP] .`` with every agreement of the module docstring."""
        subject_tokens, subject = self.noun_phrase(topic=topic, modifiers=True)
        tokens = subject_tokens + self.verb_phrase(subject, topic=topic)
        if self.rng.random() < 0.4:
            pronoun = PRONOUNS[subject.number, subject.gender][0]
            tokens += [",", self.rng.choice(CONJUNCTIONS), pronoun, *self.verb_phrase(subject, topic=topic)]
        return [*tokens, "."]


def wikitext_lines(rng: random.Random, num_paragraphs: int) -> list[str]:
    """Lines (without newline) of a WikiText-style file with ``num_paragraphs`` paragraph lines."""
    grammar = SentenceGrammar(rng)
    lines = [" "]
    written = 0
    while written < num_paragraphs:
        topic = rng.randrange(len(NOUNS))
        lines += [f" = the {rng.choice(ADJECTIVES)} {NOUNS[topic][0]} = ", " "]
        for section in range(rng.randint(1, 3)):
            if section > 0:
                lines += [f" = = {rng.choice(SECTION_NAMES)} = = ", " "]
            for _ in range(min(rng.randint(1, 3), num_paragraphs - written)):
                sentences = [grammar.sentence(topic=topic) for _ in range(rng.randint(3, 7))]
                lines += [" " + " ".join(token for s in sentences for token in s) + " ", " "]
                written += 1
    return lines


def write_synthetic_corpus(
    directory: Path,
    *,
    seed: int = 0,
    train_lines: int = 3000,
    valid_lines: int = 300,
    test_lines: int = 300,
) -> Path:
    """Write ``wiki.{train,valid,test}.tokens`` (each with that many paragraph lines) into ``directory``.

    Deterministic for a ``seed``; each split has its own random stream. The defaults give about 200k
    training tokens. Returns ``directory``.
    """
    sizes = {"train": train_lines, "valid": valid_lines, "test": test_lines}
    for split, size in sizes.items():
        if size < 1:
            raise ValueError(f"{split}_lines must be >= 1, got {split}_lines={size}")
    directory = Path(directory)
    for split, size in sizes.items():
        rng = random.Random(f"fwp-language-modeling-{seed}-{split}")
        write_lines_atomic(directory / SPLIT_FILES[split], wikitext_lines(rng, size))
    return directory
