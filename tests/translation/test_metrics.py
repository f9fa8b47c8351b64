"""BLEU helpers (``tasks.translation.metrics``): compound splitting, sufficient statistics, DDP reduction."""

from __future__ import annotations

import pytest
import torch

from tasks.translation.metrics import (
    CorpusBleuStatistics,
    bleu_variants,
    compound_split,
    tokenize_and_split_compounds,
)

HYPOTHESES = [
    "Der Hals-Nasen-Ohren-Arzt kam gestern.",
    "Das ist ein kleines Haus am See.",
    "Wir haben 3-4 Bücher über Kinder-Literatur gelesen.",
    "Gut.",
    "Ein Mann, der schnell läuft, sieht den Hund nicht.",
]
REFERENCES = [
    "Der Hals-Nasen-Ohren-Arzt kommt morgen.",
    "Das ist ein kleines Haus an dem See.",
    "Wir lasen 3 Bücher über Kinderliteratur.",
    "Sehr gut.",
    "Ein Mann, der schnell läuft, sieht den Hund.",
]


def test_compound_split_matches_the_perl_substitution() -> None:
    assert compound_split("Hals-Nasen") == "Hals ##AT##-##AT## Nasen"
    assert compound_split("Hals-Nasen-Arzt") == "Hals ##AT##-##AT## Nasen ##AT##-##AT## Arzt"
    # non-overlapping left-to-right matches, as perl's s{(\S)-(\S)}{...}g: the second hyphen of a-b-c
    # lost its left neighbour to the first match
    assert compound_split("a-b-c") == "a ##AT##-##AT## b-c"
    assert compound_split("a-b c-d") == "a ##AT##-##AT## b c ##AT##-##AT## d"
    assert compound_split("a - b, -x y-") == "a - b, -x y-"
    # Moses' German rules (tokenizer.perl -l de): hyphens stay in the token, so numbers and
    # compounds reach the split; abbreviations with a non-breaking prefix keep their dot.
    assert tokenize_and_split_compounds("Hals-Nasen-Arzt, 3-4 Jahre.") == (
        "Hals ##AT##-##AT## Nasen ##AT##-##AT## Arzt , 3 ##AT##-##AT## 4 Jahre ."
    )
    assert tokenize_and_split_compounds("Die 2013-2014 Saison, z.B. mit Dr. Müller-Lüdenscheidt.") == (
        "Die 2013 ##AT##-##AT## 2014 Saison , z.B. mit Dr. Müller ##AT##-##AT## Lüdenscheidt ."
    )


@pytest.mark.parametrize("variant", bleu_variants(), ids=lambda variant: variant.name)
def test_summed_sentence_statistics_give_sacrebleus_corpus_score(variant) -> None:
    statistics = variant.statistics(HYPOTHESES, REFERENCES)
    assert statistics.shape == (5, 10)
    expected = variant.corpus_score(HYPOTHESES, REFERENCES)
    score = variant.score(statistics.sum(dim=0))
    assert score.score == pytest.approx(expected.score, abs=1e-12)
    assert score.counts == expected.counts and score.sys_len == expected.sys_len
    assert 0.0 < score.score < 100.0


def test_the_two_variants_differ_on_compounds_and_are_labelled() -> None:
    detokenised, compound = bleu_variants()
    assert detokenised.name == "sacrebleu" and "tok:13a" in detokenised.signature()
    assert compound.name == "bleu_compound_split" and "tok:none" in compound.signature()
    hypothesis, reference = ["Die Kinder-Literatur"], ["Die Kinderliteratur"]
    assert compound.corpus_score(hypothesis, reference).sys_len == 4  # Die Kinder ##AT##-##AT## Literatur
    assert detokenised.corpus_score(hypothesis, reference).sys_len == 2


def test_corpus_statistics_count_duplicated_ids_once() -> None:
    variant = bleu_variants()[0]
    statistics = variant.statistics(HYPOTHESES, REFERENCES)
    metric = CorpusBleuStatistics(num_sentences=5)
    metric.update(torch.tensor([3, 0]), statistics[[3, 0]])
    metric.update(torch.tensor([1, 2, 4, 0]), statistics[[1, 2, 4, 0]])  # id 0 a second time
    totals, seen = metric.compute()
    torch.testing.assert_close(totals, statistics.sum(dim=0))
    assert int(seen) == 5
    with pytest.raises(ValueError, match="ids must lie in"):
        metric.update(torch.tensor([5]), statistics[:1])


def test_statistics_sum_reduce_across_ranks_exactly() -> None:
    """Two ranks' states merged with the metric's own reduction (``dist_reduce_fx="sum"``, what a DDP
    sync applies): rank 1 repeats id 1, as a padding distributed sampler would."""
    variant = bleu_variants()[1]
    ranks = []
    for ids in ([0, 1, 2], [3, 4, 1]):
        metric = CorpusBleuStatistics(num_sentences=len(HYPOTHESES))
        references = [REFERENCES[i] for i in ids]
        metric.update(torch.tensor(ids), variant.statistics([HYPOTHESES[i] for i in ids], references))
        ranks.append(metric)
    ranks[0].merge_state(ranks[1])
    totals, seen = ranks[0].compute()
    assert int(seen) == len(HYPOTHESES)
    expected = variant.corpus_score(HYPOTHESES, REFERENCES).score
    assert variant.score(totals).score == pytest.approx(expected, abs=1e-12)
