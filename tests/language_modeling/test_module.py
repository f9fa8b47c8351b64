"""LanguageModel: carried segments == one long sequence, exact perplexity, schedule, prediction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_runs import quiet_trainer

from fwp.data.files import DataError
from fwp.data.tokenizer import EOS_ID
from fwp.model import DecoderLMConfig, sample, step_log_probs
from fwp.training.optimization import learning_rate_factor
from tasks.language_modeling.data import LanguageModelingDataModule, SegmentDataset, SlidingWindowDataset
from tasks.language_modeling.module import (
    CARRIED_STATE_KEY,
    LanguageModel,
    TokenNLL,
)
from tasks.language_modeling.synthetic import write_synthetic_corpus

VOCAB = 41
pytestmark = pytest.mark.usefixtures("one_thread")


def language_model(vocab_size: int, options: dict) -> LanguageModel:
    """A ``LanguageModel`` from ``options``: the ``DecoderLMConfig`` fields among them make its
    backbone, the others are the task's arguments."""
    fields = DecoderLMConfig.field_names()
    backbone = DecoderLMConfig(**{key: value for key, value in options.items() if key in fields})
    return LanguageModel(vocab_size, backbone, **{k: v for k, v in options.items() if k not in fields})


def tiny_language_model(**kwargs) -> LanguageModel:
    """A two-layer model over ``VOCAB`` tokens (d_model 16, 2 heads, d_ff 24, no dropout); ``kwargs``
    override."""
    options = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 24, "dropout": 0.0} | kwargs
    return language_model(VOCAB, options)


def corpus_language_model(data: LanguageModelingDataModule, **kwargs) -> LanguageModel:
    """A one-layer model over ``data``'s vocabulary (d_model 16, 2 heads, d_ff 16); ``kwargs`` override."""
    options = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16} | kwargs
    return language_model(data.vocab_size, options)


def segment(stream: torch.Tensor, index: int, length: int) -> dict:
    """Segment ``index`` of the columns ``stream`` ``[B, N]``, in the data module's batch format."""
    start = index * length
    return {
        "input": stream[:, start : start + length],
        "target": stream[:, start + 1 : start + length + 1],
        "segment_index": index,
    }


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
    model = corpus_language_model(data, positional="none", carry_state=carry)
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


@pytest.fixture
def random_stream(tmp_path: Path) -> np.ndarray:
    """121 random tokens (120 = 8 · 15 targets), memory-mapped like a token cache."""
    generator = np.random.default_rng(0)
    np.save(tmp_path / "stream.npy", generator.integers(0, VOCAB, 121, dtype=np.int32))
    return np.load(tmp_path / "stream.npy", mmap_mode="r")


def evaluate(model: LanguageModel, dataset: SegmentDataset | SlidingWindowDataset) -> TokenNLL:
    """The model's ``TokenNLL`` over every batch of ``dataset`` (evaluation mode, no gradients)."""
    metric = TokenNLL()
    model.eval()
    with torch.no_grad():
        for index in range(len(dataset)):
            model.evaluation_step(dataset[index], "valid", metric)
    return metric


def brute_force_nll(model: LanguageModel, stream: np.ndarray, context: int) -> float:
    """``−Σ_t log p(x_t | x[max(0, t − context) : t])``: every target with a forward of its own window."""
    tokens = torch.as_tensor(np.asarray(stream, dtype=np.int64))
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(tokens)):
            window = tokens[max(0, t - context) : t][None]
            output, _ = model(window)
            nll -= model.model.target_log_probs(output[:, -1:], tokens[t].view(1, 1)).item()
    return nll


@pytest.mark.parametrize("windows_per_batch", [1, 4])
def test_sliding_windows_with_stride_t_score_like_fresh_segments(random_stream, windows_per_batch) -> None:
    torch.manual_seed(0)
    model = tiny_language_model(attention="delta").double()
    segments = evaluate(model, SegmentDataset(random_stream, batch_size=1, segment_length=15))
    windows = SlidingWindowDataset(random_stream, batch_size=windows_per_batch, window_length=15, stride=15)
    sliding = evaluate(model, windows)
    assert sliding.tokens == segments.tokens == len(random_stream) - 1
    if windows_per_batch == 1:
        assert sliding.nll_sum == segments.nll_sum
    else:
        torch.testing.assert_close(sliding.nll_sum, segments.nll_sum, rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"attention": "delta"},
        {"attention": "softmax", "adaptive_cutoffs": [8, 20], "tie_embeddings": True},
        {"attention": "linear", "adaptive_cutoffs": [10], "positional": "none", "eval_carry_state": True},
    ],
    ids=["delta", "softmax_adaptive", "linear_adaptive_carry"],
)
def test_stride_1_scores_every_token_with_its_own_window(random_stream, options) -> None:
    torch.manual_seed(0)
    model = tiny_language_model(**options).double().eval()
    windows = SlidingWindowDataset(random_stream, batch_size=16, window_length=9, stride=1)
    metric = evaluate(model, windows)
    assert metric.tokens == len(random_stream) - 1
    assert metric.nll_sum.item() == pytest.approx(brute_force_nll(model, random_stream, 9), rel=1e-12)


def test_sliding_validation_through_the_trainer(corpus: Path) -> None:
    torch.manual_seed(0)
    data = LanguageModelingDataModule(
        str(corpus), segment_length=12, eval_batch_size=32, eval_mode="sliding", eval_stride=1
    )
    model = corpus_language_model(data, dropout=0.0)
    metrics = quiet_trainer().validate(model, datamodule=data, verbose=False)[0]
    stream = data.token_stream("valid")
    mean_nll = brute_force_nll(model.eval(), stream, 12) / (len(stream) - 1)
    assert metrics["valid/loss"] == pytest.approx(mean_nll, rel=1e-5)
    assert metrics["valid/ppl"] == pytest.approx(math.exp(mean_nll), rel=1e-5)


def carry_run(corpus: Path, directory: Path, max_steps: int, batch_size: int = 3, ckpt_path=None):
    """A tiny carry model trained to ``max_steps`` on 8-token segments, then checkpointed."""
    data = LanguageModelingDataModule(str(corpus), batch_size=batch_size, segment_length=8)
    model = corpus_language_model(data, n_layers=2, positional="none", carry_state=True)
    trainer = quiet_trainer(max_steps=max_steps, limit_val_batches=0, default_root_dir=directory)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    trainer.save_checkpoint(directory / f"step{max_steps}.ckpt")
    return model, directory / f"step{max_steps}.ckpt"


def test_checkpoints_hold_the_carried_training_state(corpus: Path, tmp_path: Path) -> None:
    model, checkpoint = carry_run(corpus, tmp_path, max_steps=2)
    saved = torch.load(checkpoint, weights_only=True)[CARRIED_STATE_KEY]
    stream = model.streams["train"]
    assert (saved["next_segment"], saved["next_position"]) == (2, 16)
    assert [tuple(W.shape) for W in saved["W"]] == [(3, 2, 32, 8)] * 2  # [B, H, 4·d_head (DPFP), d_head]
    assert saved["z"] == [None, None]
    for W, state in zip(saved["W"], stream.states, strict=True):
        assert torch.equal(W, state.W)
    resumed, _ = carry_run(corpus, tmp_path / "resumed", max_steps=3, ckpt_path=checkpoint)
    assert resumed.streams["train"].next_position == 24  # positions continued: the memory was restored


COLUMN_MISMATCH = r"holds 3 columns \(layer 0's W \[3, 2, 32, 8\]\), this run has 2 .*batch_size=2.*empty"


@pytest.mark.parametrize(
    ("drop_key", "batch_size", "message"),
    [(True, 3, "no carried training state.*empty memory"), (False, 2, COLUMN_MISMATCH)],
    ids=["older_checkpoint", "other_batch_size"],
)
def test_resuming_without_a_matching_carried_state_warns_and_starts_empty(
    corpus: Path, tmp_path: Path, drop_key: bool, batch_size: int, message: str
) -> None:
    _, checkpoint = carry_run(corpus, tmp_path, max_steps=2)
    if drop_key:
        contents = torch.load(checkpoint, weights_only=True)
        del contents[CARRIED_STATE_KEY]
        torch.save(contents, checkpoint)
    with pytest.warns(UserWarning, match=message):
        resumed, _ = carry_run(corpus, tmp_path / "resumed", 3, batch_size=batch_size, ckpt_path=checkpoint)
    assert resumed.streams["train"].next_position == 8  # a fresh stream: positions restarted


def test_token_nll_accumulates_sums_not_batch_means() -> None:
    metric = TokenNLL()
    metric.update(torch.log(torch.tensor([0.5, 0.25])))
    metric.update(torch.log(torch.tensor([[0.125]])))
    assert metric.compute().item() == pytest.approx(math.log(2) * (1 + 2 + 3) / 3)


def test_trainer_follows_the_schedule(corpus: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    model = corpus_language_model(data, lr=0.01, warmup_steps=2, attention="linear")
    trainer = quiet_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    expected = 0.01 * learning_rate_factor(4, schedule="cosine", warmup_steps=2, total_steps=4)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)
    assert trainer.global_step == 4
    assert {"train/loss", "train/grad_norm"} <= set(trainer.callback_metrics)


def test_cosine_without_a_step_budget_is_refused(corpus: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    model = corpus_language_model(data, attention="linear")
    with pytest.raises(ValueError, match="max_steps"):
        quiet_trainer(max_steps=-1, max_epochs=-1, limit_val_batches=0).fit(model, datamodule=data)


def test_adaptive_softmax_generation_matches_the_parallel_forward() -> None:
    torch.manual_seed(0)
    model = tiny_language_model(adaptive_cutoffs=[8, 20], tie_embeddings=True).double().eval()
    tokens = torch.randint(0, VOCAB, (2, 9))
    parallel = model.model.log_probs(model(tokens)[0])
    torch.testing.assert_close(step_log_probs(model.model, tokens, prompt_length=4), parallel[:, 3:])


def predict(data: LanguageModelingDataModule, **kwargs) -> list[dict]:
    """``trainer.predict`` of a fresh ``corpus_language_model`` on ``data`` (seeded); its samples."""
    torch.manual_seed(0)
    model = corpus_language_model(data, **kwargs)
    batches = quiet_trainer().predict(model, datamodule=data)
    assert len(batches) == 1, "predict must run one batch, whatever the test split's length"
    return batches[0]


def test_predict_draws_num_samples_continuations_of_the_test_split_start(corpus: Path, capsys) -> None:
    """Predict ran every test batch (a config's ``limit_predict_batches: 1`` is read as 100 %) and
    printed to the log; now one prompt, ``num_samples`` continuations, one line each on stdout."""
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8, eval_batch_size=2)
    samples = predict(data, prompt_length=5, max_new_tokens=3, top_k=4, num_samples=3)
    data.setup("test")
    first = next(iter(data.test_dataloader()))["input"][0, :5].tolist()
    assert len(samples) == 3
    assert all(sample["prompt_ids"] == first for sample in samples)
    assert all(len(sample["generated_ids"]) == 3 for sample in samples)
    decoded = [data.tokenizer.decode(s["generated_ids"], skip_special_tokens=False) for s in samples]
    assert capsys.readouterr().out.splitlines() == decoded


def test_a_prompt_text_is_continued_greedily_into_predict_output(corpus: Path, tmp_path: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    words = [data.tokenizer.id_to_token(i) for i in (7, 9, 11)]
    output = tmp_path / "out" / "samples.txt"
    options = {"max_new_tokens": 4, "temperature": 0.0, "num_samples": 2, "predict_output": str(output)}
    samples = predict(data, prompt=" ".join(words[:2]) + "\n" + words[2], **options)
    assert samples[0]["prompt_ids"] == [7, 9, EOS_ID, 11]
    assert samples[0]["generated_ids"] == samples[1]["generated_ids"], "temperature 0 is greedy"
    torch.manual_seed(0)
    model = corpus_language_model(data).eval()
    expected = sample(model.model, torch.tensor([[7, 9, EOS_ID, 11]]), max_new_tokens=4, temperature=0.0)
    assert samples[0]["generated_ids"] == expected[0, 4:].tolist()
    assert output.read_text().splitlines() == [samples[0]["generated"]] * 2


def test_a_prompt_file_is_read_as_the_prompt(corpus: Path, tmp_path: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    words = " ".join(data.tokenizer.id_to_token(i) for i in (5, 6))
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(words + "\n", encoding="utf-8")
    samples = predict(
        data, prompt_file=str(prompt_file), max_new_tokens=2, predict_output=str(tmp_path / "o")
    )
    assert samples[0]["prompt_ids"] == [5, 6]


def test_prompt_words_outside_the_vocabulary_are_refused_by_name(corpus: Path) -> None:
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    known = data.tokenizer.id_to_token(7)
    with pytest.raises(DataError, match="prompt: words not in the vocabulary: 'zzyzx', 'qwerty'"):
        predict(data, prompt=f"{known} zzyzx <unk> qwerty zzyzx", max_new_tokens=2)


def test_a_prompt_too_long_for_learned_positions_is_refused_by_name(corpus: Path) -> None:
    """Generation past a learned position table failed deep inside the model (an index error)."""
    data = LanguageModelingDataModule(str(corpus), batch_size=2, segment_length=8)
    prompt = " ".join([data.tokenizer.id_to_token(7)] * 6)
    options = {"positional": "learned", "max_positions": 8, "max_new_tokens": 4}
    with pytest.raises(
        DataError, match=r"prompt: generation needs 9 positions.*max_new_tokens=4.*max_positions=8"
    ):
        predict(data, prompt=prompt, prompt_length=1, **options)
    with pytest.raises(ValueError, match=r"generation needs 9 positions.*prompt_length"):
        tiny_language_model(prompt_length=6, **options)


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
        ({"num_samples": 0}, "num_samples"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"log_text_samples": -1}, "log_text_samples"),
        ({"prompt": "  \n "}, "prompt: the prompt is empty"),
        ({"prompt": "a", "prompt_file": "b"}, "not both"),
        ({"prompt_file": "/nonexistent/prompt.txt"}, "prompt_file /nonexistent/prompt.txt: no such file"),
        ({"predict_output": "/"}, "predict_output / is a directory"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        tiny_language_model(**kwargs)
