"""BLEU for translation, with sacrebleu's object API (``sacrebleu.metrics.BLEU``).

Two scores per target language, clearly labelled:

- ``sacrebleu``: detokenised hypotheses against detokenised references, sacrebleu's default
  ``13a`` tokenisation; reported with its signature (``nrefs:1|case:mixed|eff:no|tok:13a|...``).
- a tokenised BLEU: both sides tokenised by the Moses tokeniser with the rules of the target
  language (``sacremoses``, as ``tokenizer.perl -l <lang>``: e.g. French ``l'homme`` → ``l' homme``,
  German keeps ``z.B.`` and ``2013-2014`` together), then BLEU with ``tokenize="none"``. Not comparable
  with sacreBLEU scores.

  - German targets: ``bleu_compound_split``, the score WMT14 En-De papers report (tensor2tensor
    ``get_ende_bleu.sh`` / fairseq ``compound_split_bleu.sh``): after tokenisation every ``a-b`` is
    split into ``a ##AT##-##AT## b``.
  - Any other target: ``bleu_moses``, plain Moses-tokenised BLEU (no compound split: the convention
    exists only for German). A language Moses has no rules for (e.g. the synthetic corpus's ``tgt``)
    gets Moses' default rules, which its label says.

Corpus BLEU is a function of sufficient statistics summed over sentences: matching n-gram counts
``correct[n]``, hypothesis n-gram counts ``total[n]`` (n = 1..4), hypothesis length and reference
length, laid out as one vector ``[correct_1..4, total_1..4, sys_len, ref_len]`` (``STATISTICS_SIZE``).
``CorpusBleuStatistics`` accumulates these vectors per sentence id and sum-reduces them across DDP
ranks, so the score is exactly that of the whole corpus, with samples duplicated by a distributed
sampler counted once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial

import torch
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import BLEUScore
from sacremoses import MosesTokenizer
from sacremoses.corpus import NonbreakingPrefixes
from torch import Tensor
from torchmetrics import Metric

MAX_NGRAM_ORDER = 4
STATISTICS_SIZE = 2 * MAX_NGRAM_ORDER + 2

_COMPOUND = re.compile(r"(\S)-(\S)")
MOSES_LANGUAGES = frozenset(NonbreakingPrefixes().available_langs.values())


def compound_split(text: str) -> str:
    """``a-b`` → ``a ##AT##-##AT## b`` for every non-overlapping match, left to right.

    The same substitution as ``perl -ple 's{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g'`` of the
    tensor2tensor/fairseq script, quirk included: in ``a-b-c`` the second hyphen's left neighbour was
    consumed by the first match, so it stays ``a ##AT##-##AT## b-c``.
    """
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", text)


@cache
def moses_tokenizer(language: str) -> MosesTokenizer:
    """The Moses tokeniser with the rules of ``language`` (built once per language)."""
    return MosesTokenizer(lang=language)


def moses_tokenize(text: str, language: str) -> str:
    """Moses tokenisation with the rules of ``language`` (``tokenizer.perl -l <language>``; no entity
    escaping, which changes no token boundary and so no BLEU)."""
    return moses_tokenizer(language).tokenize(text, return_str=True, escape=False)


def tokenize_and_split_compounds(text: str) -> str:
    """``moses_tokenize`` with German rules, then ``compound_split`` (the WMT14 En-De papers' BLEU)."""
    return compound_split(moses_tokenize(text, "de"))


@dataclass(frozen=True)
class BleuVariant:
    """One way of scoring: ``preprocess`` applied to hypotheses and references, then ``bleu``."""

    name: str
    label: str
    bleu: BLEU
    preprocess: Callable[[str], str]

    def sentence_statistics(self, hypothesis: str, reference: str) -> list[int]:
        """The ``STATISTICS_SIZE`` sufficient statistics of one sentence pair."""
        score = self.bleu.corpus_score([self.preprocess(hypothesis)], [[self.preprocess(reference)]])
        return [*score.counts, *score.totals, score.sys_len, score.ref_len]

    def statistics(self, hypotheses: Sequence[str], references: Sequence[str]) -> Tensor:
        """Per-sentence statistics ``[N, STATISTICS_SIZE]`` (float64, exact integers)."""
        if len(hypotheses) != len(references):
            raise ValueError(
                f"hypotheses and references differ in number: {len(hypotheses)} != {len(references)}"
            )
        rows = [self.sentence_statistics(h, r) for h, r in zip(hypotheses, references, strict=True)]
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), STATISTICS_SIZE)

    def score(self, statistics: Tensor) -> BLEUScore:
        """Corpus BLEU from statistics summed over sentences (a ``[STATISTICS_SIZE]`` vector)."""
        if statistics.shape != (STATISTICS_SIZE,):
            raise ValueError(f"statistics must have shape [{STATISTICS_SIZE}], got {tuple(statistics.shape)}")
        values = [round(float(x)) for x in statistics]
        return BLEU.compute_bleu(
            correct=values[:MAX_NGRAM_ORDER],
            total=values[MAX_NGRAM_ORDER : 2 * MAX_NGRAM_ORDER],
            sys_len=values[-2],
            ref_len=values[-1],
            smooth_method=self.bleu.smooth_method,
            smooth_value=self.bleu.smooth_value,
            effective_order=self.bleu.effective_order,
            max_ngram_order=MAX_NGRAM_ORDER,
        )

    def signature(self) -> str:
        """sacrebleu's signature of this variant's metric (``nrefs:1|case:mixed|...|version:...``)."""
        self.bleu.corpus_score(["x"], [["x"]])  # the signature needs the number of references
        return str(self.bleu.get_signature())

    def corpus_score(self, hypotheses: Sequence[str], references: Sequence[str]) -> BLEUScore:
        """sacrebleu's corpus score of ``hypotheses`` against one reference each (the oracle the
        statistics path must equal)."""
        return self.bleu.corpus_score(
            [self.preprocess(h) for h in hypotheses], [[self.preprocess(r) for r in references]]
        )


def _unchanged(text: str) -> str:
    return text


def bleu_variants(target_language: str) -> tuple[BleuVariant, BleuVariant]:
    """The two reported scores for a target language (a Moses language code such as ``de``, ``fr``,
    ``es``): detokenised sacreBLEU, and tokenised BLEU with that language's Moses rules,
    compound-split for German (``bleu_compound_split``), plain otherwise (``bleu_moses``)."""
    sacrebleu = BleuVariant("sacrebleu", "sacreBLEU (detokenised, tok:13a)", BLEU(tokenize="13a"), _unchanged)
    if target_language == "de":
        return sacrebleu, BleuVariant(
            "bleu_compound_split",
            "tokenised BLEU (Moses de tokens, compound-split, tok:none; as WMT14 En-De papers)",
            BLEU(tokenize="none"),
            tokenize_and_split_compounds,
        )
    rules = (
        f"Moses {target_language} tokens"
        if target_language in MOSES_LANGUAGES
        else f"Moses tokens, default rules: Moses has none for {target_language!r}"
    )
    return sacrebleu, BleuVariant(
        "bleu_moses",
        f"tokenised BLEU ({rules}, tok:none)",
        BLEU(tokenize="none"),
        partial(moses_tokenize, language=target_language),
    )


class SentenceSums(Metric):
    """Per-sentence sums of ``width`` quantities over a corpus of ``num_sentences`` sentences, keyed by
    sentence id.

    ``update(ids [n], values [n, width])`` adds rows; states are sum-reduced across processes;
    ``compute()`` returns the corpus totals ``[width]``, counting each id once (a sample seen several
    times, e.g. repeated by a distributed sampler to even out the ranks, is averaged over its copies,
    identical under deterministic evaluation), and the number of distinct ids seen.
    """

    full_state_update = False

    def __init__(self, num_sentences: int, width: int) -> None:
        super().__init__()
        if num_sentences < 1:
            raise ValueError(f"num_sentences must be >= 1, got num_sentences={num_sentences}")
        self.num_sentences = num_sentences
        self.width = width
        self.add_state("per_sentence", torch.zeros(num_sentences, width, dtype=torch.float64), "sum")
        self.add_state("copies", torch.zeros(num_sentences, dtype=torch.float64), "sum")

    def update(self, ids: Tensor, values: Tensor) -> None:
        if ids.dim() != 1 or values.shape != (ids.numel(), self.width):
            raise ValueError(
                f"ids must be [n] and values [n, {self.width}], got {tuple(ids.shape)} "
                f"and {tuple(values.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_sentences):
            raise ValueError(
                f"ids must lie in [0, {self.num_sentences}), got min {int(ids.min())}, max {int(ids.max())}"
            )
        ids = ids.to(self.per_sentence.device)
        self.per_sentence.index_add_(0, ids, values.to(self.per_sentence))
        self.copies.index_add_(0, ids, torch.ones_like(ids, dtype=self.copies.dtype))

    def compute(self) -> tuple[Tensor, Tensor]:
        """The corpus totals ``[width]`` and the number of distinct ids seen ``[]``."""
        seen = self.copies > 0
        per_copy = self.per_sentence / self.copies.clamp(min=1.0)[:, None]
        return per_copy.sum(dim=0), seen.sum()


class CorpusBleuStatistics(SentenceSums):
    """Sufficient BLEU statistics ``[n, STATISTICS_SIZE]`` of a corpus, each sentence counted once
    (``SentenceSums``): ``compute()`` gives the corpus statistics and the number of sentences scored."""

    def __init__(self, num_sentences: int) -> None:
        super().__init__(num_sentences, STATISTICS_SIZE)
