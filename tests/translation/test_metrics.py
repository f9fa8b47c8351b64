"""BLEU (``tasks.translation.metrics``): the variants per target language and the text each receives,
compound splitting, sufficient statistics, DDP reduction, and what an evaluation run reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning_runs import quiet_trainer

from fwp.model import EncoderDecoderConfig
from tasks.translation import module
from tasks.translation.data import TranslationDataModule
from tasks.translation.metrics import (
    CorpusBleuStatistics,
    bleu_variants,
    compound_split,
    moses_tokenize,
    tokenize_and_split_compounds,
)
from tasks.translation.module import TranslationModel

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


@pytest.mark.parametrize(
    "variant", [*bleu_variants("de"), bleu_variants("fr")[1]], ids=lambda variant: variant.name
)
def test_summed_sentence_statistics_give_sacrebleus_corpus_score(variant) -> None:
    statistics = variant.statistics(HYPOTHESES, REFERENCES)
    assert statistics.shape == (5, 10)
    expected = variant.corpus_score(HYPOTHESES, REFERENCES)
    score = variant.score(statistics.sum(dim=0))
    assert score.score == pytest.approx(expected.score, abs=1e-12)
    assert score.counts == expected.counts and score.sys_len == expected.sys_len
    assert 0.0 < score.score < 100.0


def test_the_two_variants_differ_on_compounds_and_are_labelled() -> None:
    detokenised, compound = bleu_variants("de")
    assert detokenised.name == "sacrebleu" and "tok:13a" in detokenised.signature()
    assert compound.name == "bleu_compound_split" and "tok:none" in compound.signature()
    hypothesis, reference = ["Die Kinder-Literatur"], ["Die Kinderliteratur"]
    assert compound.corpus_score(hypothesis, reference).sys_len == 4  # Die Kinder ##AT##-##AT## Literatur
    assert detokenised.corpus_score(hypothesis, reference).sys_len == 2


def test_corpus_statistics_count_duplicated_ids_once() -> None:
    variant = bleu_variants("de")[0]
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
    variant = bleu_variants("de")[1]
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


# Moses' rules differ by language (``tokenizer.perl -l``): French keeps the elided article's apostrophe
# (``l' homme``), Spanish keeps the abbreviation ``Sra.``; German splits both; 13a does neither.
ELISION = "L'homme d'affaires arrive."
ABBREVIATION = "¿Vino la Sra. Pérez?"


def test_moses_tokenisation_follows_the_target_language() -> None:
    """Catches the German-only tokenised BLEU (``MosesTokenizer(lang="de")`` for every target)."""
    assert moses_tokenize(ELISION, "fr") == "L' homme d' affaires arrive ."
    assert moses_tokenize(ELISION, "de") == "L ' homme d ' affaires arrive ."
    assert moses_tokenize(ABBREVIATION, "es") == "¿ Vino la Sra. Pérez ?"
    assert moses_tokenize(ABBREVIATION, "de") == "¿ Vino la Sra . Pérez ?"


@pytest.mark.parametrize("language", ["fr", "es"])
def test_a_non_german_target_gets_plain_moses_bleu_with_its_rules(language: str) -> None:
    """No compound split outside German (``porte-monnaie`` stays one token), the target's Moses rules,
    and a name and label that say so."""
    detokenised, tokenised = bleu_variants(language)
    assert detokenised.name == "sacrebleu"
    assert tokenised.name == "bleu_moses" and f"Moses {language} tokens" in tokenised.label
    assert "compound" not in tokenised.label and "tok:none" in tokenised.signature()
    sentence = f"{ELISION} {ABBREVIATION} Le porte-monnaie."
    assert tokenised.preprocess(sentence) == moses_tokenize(sentence, language)
    assert "porte-monnaie" in tokenised.preprocess(sentence).split()


def test_a_target_moses_does_not_know_is_labelled_as_using_default_rules() -> None:
    """The synthetic corpus's target suffix ``tgt``: Moses' default rules, said in the label."""
    _, tokenised = bleu_variants("tgt")
    assert tokenised.name == "bleu_moses"
    assert "default rules" in tokenised.label and "'tgt'" in tokenised.label


@pytest.mark.parametrize(
    ("language", "tokens"),
    [
        ("fr", {"sacrebleu": 4, "bleu_moses": 6}),  # L'homme d'affaires arrive . | L' homme d' affaires ...
        ("de", {"sacrebleu": 4, "bleu_compound_split": 8}),  # ... | L ' homme d ' affaires arrive .
    ],
)
def test_each_variant_scores_the_text_form_it_documents(language: str, tokens: dict[str, int]) -> None:
    """sacreBLEU's 13a must see detokenised text, the tokenised BLEU the target's Moses tokens: the
    hypothesis lengths (hand-counted in the comments) tell them apart. Catches Moses-tokenised text fed
    to the 13a variant, which inflates its counts while the score stays plausible."""
    for variant in bleu_variants(language):
        assert variant.corpus_score([ELISION], [ELISION]).sys_len == tokens[variant.name], variant.name
        assert variant.statistics([ELISION], [ELISION])[0, -2] == tokens[variant.name], variant.name


def write_parallel_corpus(directory: Path, src_lang: str, tgt_lang: str) -> Path:
    """A tiny English–French corpus as ``{train,valid,test}.{src_lang,tgt_lang}``."""
    pairs = [
        ("The man arrives.", "L'homme arrive."),
        ("The businessman sleeps.", "L'homme d'affaires dort."),
        ("The child eats the apple.", "L'enfant mange la pomme."),
        ("Mrs. Smith is here.", "Mme Smith est là."),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for split, repeat in (("train", 8), ("valid", 1), ("test", 1)):
        for lang, side in ((src_lang, 0), (tgt_lang, 1)):
            lines = [pair[side] for pair in pairs] * repeat
            (directory / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_an_english_french_validation_reports_both_scores_and_the_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end with ``tgt_lang: fr``: the module picks the variants from the data's target language,
    prints each score under its label with its signature and writes the signatures as TensorBoard text.
    Catches the signature dropped from the report (printed or TensorBoard) and a German compound-split
    score reported for a French target."""
    texts: dict[str, str] = {}
    monkeypatch.setattr(module, "log_text", lambda _, tag, text: texts.__setitem__(tag, text))
    corpus = write_parallel_corpus(tmp_path / "en-fr", "en", "fr")
    data = TranslationDataModule(
        data_dir=str(corpus),
        src_lang="en",
        tgt_lang="fr",
        cache_dir=str(tmp_path / "cache"),
        bpe_vocab_size=300,
    )
    torch.manual_seed(0)
    tiny = {"d_model": 16, "n_encoder_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "d_ff": 16}
    model = TranslationModel(
        data.vocab_size,
        data.pad_id,
        backbone=EncoderDecoderConfig(**tiny, dropout=0.0),
        beam_size=1,
        max_len_b=4,
    )
    metrics = quiet_trainer().validate(model, data, verbose=False)[0]
    assert {"valid/sacrebleu", "valid/bleu_moses"} <= set(metrics)
    assert "valid/bleu_compound_split" not in metrics
    printed = capsys.readouterr().out
    assert "valid sacreBLEU (detokenised, tok:13a): BLEU = " in printed
    assert "valid tokenised BLEU (Moses fr tokens, tok:none): BLEU = " in printed
    assert "valid/sacrebleu_signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in printed
    assert "valid/bleu_moses_signature: nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:" in printed
    assert texts["valid/sacrebleu_signature"].startswith(
        "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:"
    )
    assert texts["valid/bleu_moses_signature"].startswith(
        "nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:"
    )
