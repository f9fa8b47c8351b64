"""Generation: greedy sampling follows the parallel model; top-k and seeds behave."""

from __future__ import annotations

import pytest
import torch

from fwp.model import choose_tokens, sample
from tests.model.model_cases import PRESETS, tiny_lm, tokens


@pytest.mark.parametrize("attention", PRESETS)
def test_greedy_sampling_picks_the_parallel_argmax(attention: str) -> None:
    model = tiny_lm(attention)
    prompt = tokens(length=3)
    generated = sample(model, prompt, max_new_tokens=6, temperature=0.0)
    assert generated.shape == (2, 9)
    assert torch.equal(generated[:, :3], prompt)
    log_probs = model.log_probs(model(generated)[0])
    assert torch.equal(generated[:, 3:], log_probs[:, 2:-1].argmax(-1))


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k() -> None:
    model = tiny_lm("delta")
    prompt = tokens(length=2)
    draws = [
        sample(model, prompt, max_new_tokens=8, top_k=3, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])
    log_probs = model.log_probs(model(draws[0])[0])[:, 1:-1]
    top3 = log_probs.topk(3, dim=-1).indices
    assert (top3 == draws[0][:, 2:, None]).any(-1).all()


def test_choose_tokens_top_1_is_greedy() -> None:
    log_probs = torch.log_softmax(torch.randn(4, 10), dim=-1)
    chosen = choose_tokens(log_probs, temperature=1.3, top_k=1, generator=None)
    assert torch.equal(chosen, log_probs.argmax(-1))


def test_zero_new_tokens_returns_the_prompt_and_bad_options_are_named() -> None:
    model = tiny_lm("linear")
    prompt = tokens(length=4)
    assert torch.equal(sample(model, prompt, max_new_tokens=0), prompt)
    for options, name in [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ]:
        with pytest.raises(ValueError, match=name):
            sample(model, prompt, **{"max_new_tokens": 2, **options})


def test_generation_past_learned_positions_is_refused_with_the_options_named() -> None:
    """It failed inside the position embedding (an index error) after the prompt was run."""
    model = tiny_lm("delta", positional="learned", max_positions=6)
    sample(model, tokens(length=3), max_new_tokens=4, temperature=0.0)  # positions 0 … 5: fits
    with pytest.raises(ValueError, match=r"needs 7 positions.*max_new_tokens=5.*max_positions=6"):
        sample(model, tokens(length=3), max_new_tokens=5, temperature=0.0)
