"""A synthetic parallel corpus: English-like source, a toy target language with reordering and agreement.

Source grammar (3 to 20 words, first word capitalised, final full stop)::

    sentence     := noun_phrase predicate ["and" predicate] "."
    predicate    := transitive_verb noun_phrase [place] | intransitive_verb [place]
    place        := preposition noun_phrase
    noun_phrase  := ("the" | "a"/"an" | "some") adjective{0,2} noun

with verbs agreeing in number with the subject ("sees"/"see") and "a"/"an" singular, "some" plural.

Target rules (``translate_reference`` applies them exactly):

- word order subject–object–verb: a predicate becomes ``[object] [place] verb`` (verb last);
  ``and`` → ``kaj``; a place keeps its preposition first (``near`` → ``apud``);
- noun phrases become ``article noun adjective*``: adjectives follow the noun;
- every noun has a fixed target gender (masculine or feminine, not predictable from its form), and the
  article (definite/indefinite × gender × number), the adjectives and the noun (plural ``-en``) agree
  with it; the verb agrees in gender and number with the subject;
- words are mapped by a fixed lexicon of stems.

Example: "The big dog sees a small cat near the river." →
"Lo hundo grando una mira pikla apud la fluvo vidat."
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from fwp.data.files import write_lines_atomic

SPLITS = ("train", "valid", "test")
MIN_WORDS, MAX_WORDS = 3, 20


@dataclass(frozen=True)
class Noun:
    """Source forms and target stem and gender of a noun."""

    singular: str
    plural: str
    stem: str
    gender: str


@dataclass(frozen=True)
class Verb:
    """Source forms (third person singular and plural) and target stem of a verb."""

    singular: str
    plural: str
    stem: str
    transitive: bool


NOUNS = tuple(
    Noun(singular, plural, stem, {"m": "masculine", "f": "feminine"}[gender])
    for singular, plural, stem, gender in (
        ("dog", "dogs", "hundo", "m"), ("cat", "cats", "mira", "f"),
        ("house", "houses", "domo", "f"), ("tree", "trees", "arba", "m"),
        ("bird", "birds", "pasko", "m"), ("river", "rivers", "fluvo", "f"),
        ("king", "kings", "rego", "m"), ("queen", "queens", "regina", "f"),
        ("child", "children", "info", "m"), ("woman", "women", "fema", "f"),
        ("man", "men", "viro", "m"), ("girl", "girls", "pula", "f"),
        ("book", "books", "libra", "m"), ("city", "cities", "urbo", "f"),
        ("horse", "horses", "kavalo", "m"), ("ship", "ships", "navo", "f"),
        ("stone", "stones", "petra", "m"), ("garden", "gardens", "horta", "f"),
        ("bridge", "bridges", "ponto", "m"), ("tower", "towers", "turo", "f"),
        ("apple", "apples", "pomo", "m"), ("owl", "owls", "strigo", "f"),
        ("island", "islands", "insulo", "m"), ("engine", "engines", "motora", "f"),
    )
)  # fmt: skip
VERBS = (
    *(
        Verb(singular, plural, stem, transitive=True)
        for singular, plural, stem in (
            ("sees", "see", "vid"), ("likes", "like", "am"), ("follows", "follow", "sekv"),
            ("finds", "find", "trov"), ("helps", "help", "help"), ("watches", "watch", "rigard"),
            ("chases", "chase", "cas"), ("knows", "know", "kon"), ("carries", "carry", "port"),
            ("paints", "paint", "pentr"),
        )
    ),
    *(
        Verb(singular, plural, stem, transitive=False)
        for singular, plural, stem in (
            ("sleeps", "sleep", "dorm"), ("runs", "run", "kur"), ("sings", "sing", "kant"),
            ("waits", "wait", "atend"), ("falls", "fall", "fal"), ("laughs", "laugh", "rid"),
        )
    ),
)  # fmt: skip
ADJECTIVES = {
    "big": "grand", "small": "pikl", "old": "vetr", "young": "jun", "red": "rug", "black": "nigr",
    "white": "blank", "happy": "felic", "tall": "alt", "quiet": "kvet", "fast": "rapid", "green": "verd",
    "angry": "koler", "empty": "malplen",
}  # fmt: skip
PREPOSITIONS = {"near": "apud", "in": "en", "under": "sub", "with": "kun", "behind": "malantau", "on": "sur"}
SOURCE_AND, TARGET_AND = "and", "kaj"
ARTICLES = {
    (True, "masculine", "singular"): "lo", (True, "feminine", "singular"): "la",
    (True, "masculine", "plural"): "los", (True, "feminine", "plural"): "las",
    (False, "masculine", "singular"): "un", (False, "feminine", "singular"): "una",
    (False, "masculine", "plural"): "unos", (False, "feminine", "plural"): "unas",
}  # fmt: skip
ADJECTIVE_ENDINGS = {
    ("masculine", "singular"): "o", ("feminine", "singular"): "a",
    ("masculine", "plural"): "oj", ("feminine", "plural"): "aj",
}  # fmt: skip
VERB_ENDINGS = {
    ("masculine", "singular"): "at", ("feminine", "singular"): "et",
    ("masculine", "plural"): "aton", ("feminine", "plural"): "eton",
}  # fmt: skip
PLURAL_SUFFIX = "en"

NOUN_FORMS = {
    form: (noun, number)
    for noun in NOUNS
    for form, number in ((noun.singular, "singular"), (noun.plural, "plural"))
}
VERB_FORMS = {
    form: (verb, number)
    for verb in VERBS
    for form, number in ((verb.singular, "singular"), (verb.plural, "plural"))
}
DETERMINERS = ("the", "a", "an", "some")
ADJECTIVE_WORDS = tuple(sorted(ADJECTIVES))
PREPOSITION_WORDS = tuple(sorted(PREPOSITIONS))


@dataclass(frozen=True)
class NounPhrase:
    definite: bool
    adjectives: tuple[str, ...]
    noun: Noun
    number: str


@dataclass(frozen=True)
class Predicate:
    verb: Verb
    obj: NounPhrase | None
    place: tuple[str, NounPhrase] | None


@dataclass(frozen=True)
class Sentence:
    subject: NounPhrase
    predicates: tuple[Predicate, ...]


# ---------------------------------------------------------------- source side: render and parse


def _source_noun_phrase(phrase: NounPhrase) -> list[str]:
    rest = [*phrase.adjectives, phrase.noun.singular if phrase.number == "singular" else phrase.noun.plural]
    if phrase.definite:
        determiner = "the"
    elif phrase.number == "plural":
        determiner = "some"
    else:
        determiner = "an" if rest[0][0] in "aeiou" else "a"
    return [determiner, *rest]


def _source_predicate(predicate: Predicate, number: str) -> list[str]:
    words = [predicate.verb.singular if number == "singular" else predicate.verb.plural]
    if predicate.obj is not None:
        words += _source_noun_phrase(predicate.obj)
    if predicate.place is not None:
        words += [predicate.place[0], *_source_noun_phrase(predicate.place[1])]
    return words


def _source_words(sentence: Sentence) -> list[str]:
    words = _source_noun_phrase(sentence.subject)
    for i, predicate in enumerate(sentence.predicates):
        words += ([SOURCE_AND] if i else []) + _source_predicate(predicate, sentence.subject.number)
    return words


def _as_text(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


class _SourceParser:
    """Recursive-descent parser of one source sentence (grammar in the module docstring)."""

    def __init__(self, sentence: str) -> None:
        if not sentence.endswith(".") or not sentence[:1].isupper():
            raise ValueError(f"not a source sentence (capitalised, ending in '.'): {sentence!r}")
        self.sentence = sentence
        self.words = (sentence[0].lower() + sentence[1:-1]).split()
        self.position = 0

    def _fail(self, expected: str) -> ValueError:
        seen = self.words[self.position] if self.position < len(self.words) else "the end"
        return ValueError(
            f"cannot parse {self.sentence!r}: expected {expected} at word {self.position}, saw {seen!r}"
        )

    def _peek(self) -> str | None:
        return self.words[self.position] if self.position < len(self.words) else None

    def _take(self) -> str:
        word = self.words[self.position]
        self.position += 1
        return word

    def noun_phrase(self) -> NounPhrase:
        if self._peek() not in DETERMINERS:
            raise self._fail("a determiner")
        determiner = self._take()
        adjectives = []
        while self._peek() in ADJECTIVES:
            adjectives.append(self._take())
        if self._peek() not in NOUN_FORMS:
            raise self._fail("a noun")
        noun, number = NOUN_FORMS[self._take()]
        if (determiner == "some" and number != "plural") or (
            determiner in ("a", "an") and number != "singular"
        ):
            raise self._fail(f"a noun agreeing with {determiner!r}")
        return NounPhrase(determiner == "the", tuple(adjectives), noun, number)

    def predicate(self, subject_number: str) -> Predicate:
        if self._peek() not in VERB_FORMS:
            raise self._fail("a verb")
        verb, number = VERB_FORMS[self._take()]
        if number != subject_number:
            raise self._fail(f"a verb agreeing with a {subject_number} subject")
        obj = self.noun_phrase() if verb.transitive else None
        place = None
        if self._peek() in PREPOSITIONS:
            place = (self._take(), self.noun_phrase())
        return Predicate(verb, obj, place)

    def sentence_tree(self) -> Sentence:
        subject = self.noun_phrase()
        predicates = [self.predicate(subject.number)]
        if self._peek() == SOURCE_AND:
            self._take()
            predicates.append(self.predicate(subject.number))
        if self._peek() is not None:
            raise self._fail("the end of the sentence")
        return Sentence(subject, tuple(predicates))


# ---------------------------------------------------------------- target side


def _target_noun_phrase(phrase: NounPhrase) -> list[str]:
    gender, number = phrase.noun.gender, phrase.number
    noun = phrase.noun.stem + (PLURAL_SUFFIX if number == "plural" else "")
    adjectives = [ADJECTIVES[a] + ADJECTIVE_ENDINGS[gender, number] for a in phrase.adjectives]
    return [ARTICLES[phrase.definite, gender, number], noun, *adjectives]


def _target_words(sentence: Sentence) -> list[str]:
    words = _target_noun_phrase(sentence.subject)
    agreement = (sentence.subject.noun.gender, sentence.subject.number)
    for i, predicate in enumerate(sentence.predicates):
        if i:
            words.append(TARGET_AND)
        if predicate.obj is not None:
            words += _target_noun_phrase(predicate.obj)
        if predicate.place is not None:
            words += [PREPOSITIONS[predicate.place[0]], *_target_noun_phrase(predicate.place[1])]
        words.append(predicate.verb.stem + VERB_ENDINGS[agreement])
    return words


def translate_reference(sentence: str) -> str:
    """The exact rule-based translation of a source sentence of this grammar; ``ValueError`` otherwise."""
    return _as_text(_target_words(_SourceParser(sentence).sentence_tree()))


# ---------------------------------------------------------------- sampling


class _SentenceSampler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def noun_phrase(self, max_adjectives: int) -> NounPhrase:
        rng = self.rng
        adjectives = tuple(rng.sample(ADJECTIVE_WORDS, k=rng.randint(0, max_adjectives)))
        return NounPhrase(
            rng.random() < 0.6, adjectives, rng.choice(NOUNS), rng.choice(("singular", "plural"))
        )

    def predicate(self) -> Predicate:
        rng = self.rng
        verb = rng.choice(VERBS)
        obj = self.noun_phrase(2) if verb.transitive else None
        place = (rng.choice(PREPOSITION_WORDS), self.noun_phrase(1)) if rng.random() < 0.4 else None
        return Predicate(verb, obj, place)

    def sentence(self) -> Sentence:
        """A sentence of ``MIN_WORDS`` to ``MAX_WORDS`` source words (longer draws are redrawn)."""
        while True:
            predicates = (self.predicate(),) + ((self.predicate(),) if self.rng.random() < 0.3 else ())
            sentence = Sentence(self.noun_phrase(2), predicates)
            if MIN_WORDS <= len(_source_words(sentence)) <= MAX_WORDS:
                return sentence


def sample_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` (source, target) sentence pairs drawn with ``rng``."""
    sampler = _SentenceSampler(rng)
    trees = [sampler.sentence() for _ in range(count)]
    return [(_as_text(_source_words(tree)), _as_text(_target_words(tree))) for tree in trees]


def write_synthetic_parallel_corpus(
    directory: Path, *, seed: int = 0, n_train: int = 20000, n_valid: int = 500, n_test: int = 500
) -> Path:
    """Write ``{train,valid,test}.{src,tgt}`` (one sentence per line) into ``directory``; return it.

    Deterministic for a ``seed``; each split has its own random stream.
    """
    sizes = dict(zip(SPLITS, (n_train, n_valid, n_test), strict=True))
    for split, size in sizes.items():
        if size < 1:
            raise ValueError(f"n_{split} must be >= 1, got n_{split}={size}")
    directory = Path(directory)
    for split, size in sizes.items():
        pairs = sample_pairs(random.Random(f"fwp-translation-{seed}-{split}"), size)
        write_lines_atomic(directory / f"{split}.src", [source for source, _ in pairs])
        write_lines_atomic(directory / f"{split}.tgt", [target for _, target in pairs])
    return directory
