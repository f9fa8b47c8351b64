"""LanguageModel: carried segments == one long sequence, exact perplexity, schedule, prediction."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from fwp.model import step_log_probs
from tasks.language_modeling.data import LanguageModelingDataModule
from tasks.language_modeling.module import LanguageModel, TokenNLL, learning_rate_factor
from tasks.language_modeling.synthetic import write_synthetic_corpus

VOCAB = 41


def tiny_language_model(**kwargs) -> LanguageModel:
    options = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 24, "dropout": 0.0} | kwargs
    return LanguageModel(VOCAB, **options)


def segment(stream: torch.Tensor, index: int, length: int) -> dict:
    """Segment ``index`` of the columns ``stream`` ``[B, N]``, in the data module's batch format."""
    start = index * length
    return {
        "input": stream[:, start : start + length],
        "target": stream[:, start + 1 : start + length + 1],
        "segment_index": index,
    }


def quiet_trainer(**kwargs) -> L.Trainer:
    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**(options | kwargs))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest and does not oversubscribe a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("lm_corpus"), train_lines=40, valid_lines=12, test_lines=12
    )


@pytest.mark.parametrize("positional", ["none", "sinusoidal"])
@pytest.mark.parametrize("attention", ["linear", "delta", {"name": "performer", "m": 8}])
def test_carried_segments_score_like_one_long_sequence(attention, positional: str) -> None:
    torch.manual_seed(0)
    model = tiny_language_model(attention=attention, positional=positional, carry_state=True).double().eval()
    stream = torch.randint(0, VOCAB, (3, 3 * 6 + 1))
    carried = torch.cat([model.segment_log_probs(segment(stream, s, 6), "valid", True) for s in range(3)], 1)
    whole = model.segment_log_probs(segment(stream, 0, 18), "other", False)
    torch.testing.assert_close(carried, whole, rtol=1e-9, atol=1e-10)
    restarted = model.segment_log_probs(segment(stream, 0, 6), "valid", True)
    torch.testing.assert_close(restarted, whole[:, :6], rtol=1e-9, atol=1e-10)


def test_a_segment_that_does_not_follow_starts_from_empty_memory() -> None:
    torch.manual_seed(0)
    model = tiny_language_model(attention="delta", positional="none", carry_state=True).double().eval()
    stream = torch.randint(0, VOCAB, (2, 3 * 5 + 1))
    model.segment_log_probs(segment(stream, 0, 5), "train", True)
    skipped = model.segment_log_probs(segment(stream, 2, 5), "train", True)
    fresh = tiny_language_model(attention="delta", positional="none").double().eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(skipped, fresh.segment_log_probs(segment(stream, 2, 5), "x", False))


def test_without_carry_every_segment_starts_fresh() -> None:
    torch.manual_seed(0)
    model = tiny_language_model(attention="delta").double().eval()
    stream = torch.randint(0, VOCAB, (2, 2 * 5 + 1))
    model.segment_log_probs(segment(stream, 0, 5), "train", False)
    second = model.segment_log_probs(segment(stream, 1, 5), "train", False)
    alone = model.segment_log_probs({**segment(stream, 1, 5), "segment_index": 0}, "y", False)
    torch.testing.assert_close(second, alone)
    assert model.streams == {}


@pytest.mark.parametrize("carry", [False, True])
def test_validation_perplexity_is_the_exponent_of_the_mean_token_nll(corpus: Path, carry: bool) -> None:
    torch.manual_seed(0)
    data = LanguageModelingDataModule(str(corpus), batch_size=4, segment_length=16, eval_batch_size=3)
    model = LanguageModel(
        data.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=16, positional="none", carry_state=carry
    )
    metrics = quiet_trainer().validate(model, datamodule=data, verbose=False)[0]
    data.setup("validate")
    nll_sum, tokens, states = 0.0, 0, None
    model.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            output, new_states = model(batch["input"], states=states if carry else None)
            states = new_states
            nll_sum -= model.model.target_log_probs(output, batch["target"]).double().sum().item()
            tokens += batch["target"].numel()
    assert tokens == (len(data.token_stream("valid")) // 3 - 1) * 3
    assert metrics["valid/ppl"] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)
    assert metrics["valid/loss"] == pytest.approx(nll_sum / tokens, rel=1e-5)


def test_token_nll_accumulates_sums_not_batch_means() -> None:
    metric = TokenNLL()
    metric.update(torch.log(torch.tensor([0.5, 0.25])))
    metric.update(torch.log(torch.tensor([[0.125]])))
    assert metric.compute().item() == pytest.approx(math.log(2) * (1 + 2 + 3) / 3)


def test_schedule_warms_up_then_follows_its_shape() -> None:
    factor = lambda step, schedule: learning_rate_factor(  # noqa: E731
        step, schedule=schedule, warmup_steps=10, total_steps=110
    )
    assert factor(0, "cosine") == pytest.approx(0.1)
    assert factor(9, "cosine") == pytest.approx(1.0)
    assert factor(60, "cosine") == pytest.approx(0.5)
    assert factor(110, "cosine") == pytest.approx(0.0)
    assert factor(500, "cosine") == pytest.approx(0.0)
    assert factor(50, "constant") == 1.0
    assert factor(39, "inverse_sqrt") == pytest.approx(0.5)


def test_trainer_follows_the_schedule(corpus: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    model = LanguageModel(
        data.vocab_size,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=16,
        lr=0.01,
        warmup_steps=2,
        attention="linear",
    )
    trainer = quiet_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    expected = 0.01 * learning_rate_factor(4, schedule="cosine", warmup_steps=2, total_steps=4)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)
    assert trainer.global_step == 4
    assert {"train/loss", "train/tokens_per_s"} <= set(trainer.callback_metrics)


def test_cosine_without_a_step_budget_is_refused(corpus: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    model = LanguageModel(data.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=16, attention="linear")
    with pytest.raises(ValueError, match="max_steps"):
        quiet_trainer(max_steps=-1, max_epochs=-1, limit_val_batches=0).fit(model, datamodule=data)


def test_adaptive_softmax_generation_matches_the_parallel_forward() -> None:
    torch.manual_seed(0)
    model = tiny_language_model(adaptive_cutoffs=[8, 20], tie_embeddings=True).double().eval()
    tokens = torch.randint(0, VOCAB, (2, 9))
    parallel = model.model.log_probs(model(tokens)[0])
    torch.testing.assert_close(step_log_probs(model.model, tokens, prompt_length=4), parallel[:, 3:])


def test_predict_continues_prompts_and_decodes_them(corpus: Path) -> None:
    torch.manual_seed(0)
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8, eval_batch_size=2)
    model = LanguageModel(
        data.vocab_size,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=16,
        prompt_length=5,
        max_new_tokens=3,
        top_k=4,
    )
    samples = quiet_trainer(limit_predict_batches=1).predict(model, datamodule=data)[0]
    batch = next(iter(data.test_dataloader()))
    assert len(samples) == 2
    assert samples[0]["prompt_ids"] == batch["input"][0, :5].tolist()
    assert len(samples[0]["generated_ids"]) == 3
    assert samples[0]["generated"] == data.tokenizer.decode(
        samples[0]["generated_ids"], skip_special_tokens=False
    )
    assert samples[0]["prompt"].split() == [data.tokenizer.id_to_token(i) for i in samples[0]["prompt_ids"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "softmax", "carry_state": True}, "carry_state"),
        ({"attention": "softmax", "eval_carry_state": True}, "carry_state"),
        ({"attention": "delta", "positional": "learned", "carry_state": True}, "positional"),
        ({"schedule": "linear"}, "schedule"),
        ({"lr": 0.0}, "lr"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_language_model(**kwargs)
