"""Packed sequences through ``MultiHeadAttention`` and every core: ``N`` sequences laid end to end in one
row with offsets ``cu_seqlens`` give, in float64, exactly what each sequence gives alone — outputs, every
gradient (inputs and parameters) and each sequence's final state, also when states are carried into a
second call; cross-attention of packed queries over a packed memory reads only the own source."""

from __future__ import annotations

import pytest
import torch
from attention_cases import (
    ALL_SPECS,
    BIDIRECTIONAL_SPECS,
    build_mha,
    sequence,
    state_tensors,
)
from torch import Tensor

from fwp.attention import AttentionState, KVCache, MultiHeadAttention
from fwp.ops import cu_seqlens_from_lengths

LENGTHS = (3, 1, 6, 4)
MEMORY_LENGTHS = (5, 2, 1, 7)
CAUSAL_SPECS = {label: spec for label, spec in ALL_SPECS.items() if not label.endswith("-step")}
"""Every core and preset (the step backend is the auto backend's single-token path: covered by auto)."""


def split(x: Tensor, lengths: tuple[int, ...]) -> list[Tensor]:
    """``[1, T, d]`` → the ``N`` sequences ``[1, l_n, d]``."""
    return list(x.split(list(lengths), dim=1))


def sequence_rows(state: AttentionState, n: int, length: int) -> list[Tensor]:
    """The tensors of sequence ``n``'s part of a packed state as a separate run holds them (a cache
    row without its padding)."""
    if isinstance(state, KVCache):
        return [state.k[n : n + 1, :, :length], state.v[n : n + 1, :, :length]]
    return [x[n : n + 1] for x in state_tensors(state)]


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)


def gradients(module: MultiHeadAttention, outputs: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """The gradients of a fixed random projection of ``outputs`` into ``inputs`` and every parameter."""
    weights = torch.randn(outputs.shape, dtype=outputs.dtype, generator=torch.Generator().manual_seed(1))
    leaves = [*inputs, *(p for p in module.parameters() if p.requires_grad)]
    return list(torch.autograd.grad((outputs * weights).sum(), leaves, allow_unused=True))


def assert_gradients_close(packed: list[Tensor], separate: list[Tensor]) -> None:
    for a, e in zip(packed, separate, strict=True):
        if a is None or e is None:
            assert a is None and e is None
        else:
            assert_close(a, e)


def run_separately(
    module: MultiHeadAttention, xs: list[Tensor], states: list[AttentionState | None]
) -> tuple[Tensor, list[AttentionState]]:
    outputs, new_states = zip(*(module(x, state=s) for x, s in zip(xs, states, strict=True)), strict=True)
    return torch.cat(outputs, dim=1), list(new_states)


def carried_state(states: list[AttentionState], lengths: tuple[int, ...]) -> AttentionState:
    """The ``N`` separate states as one packed state (``N`` rows; a cache padded at the end)."""
    if isinstance(states[0], KVCache):
        longest = max(lengths)

        def padded(x: Tensor) -> Tensor:
            return torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[2]))

        padding = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
        return KVCache(
            torch.cat([padded(s.k) for s in states]), torch.cat([padded(s.v) for s in states]), padding
        )
    first = states[0]
    return type(first)(
        *(None if x is None else torch.cat([getattr(s, f) for s in states]) for f, x in vars(first).items())
    )


@pytest.mark.parametrize("label", list(CAUSAL_SPECS))
def test_packed_causal_equals_separate(label: str) -> None:
    """Catches a core or layer part that lets a sequence see the one before it (the short convolution's
    window, a memory or cache not reset at a start), or positions mixed up when states are carried."""
    module = build_mha(CAUSAL_SPECS[label])
    cu_seqlens = cu_seqlens_from_lengths(LENGTHS)
    x = sequence(1, sum(LENGTHS)).requires_grad_()
    y, state = module(x, cu_seqlens=cu_seqlens)
    y_separate, separate_states = run_separately(module, split(x, LENGTHS), [None] * len(LENGTHS))
    assert_close(y, y_separate)
    assert_gradients_close(gradients(module, y, [x]), gradients(module, y_separate, [x]))
    for n, length in enumerate(LENGTHS):
        for a, e in zip(sequence_rows(state, n, length), state_tensors(separate_states[n]), strict=True):
            assert_close(a, e)
    # a second packed call continues every sequence's state
    separate_states = [s.detach() for s in separate_states]
    more = (2, 5, 1, 3)
    x2 = sequence(1, sum(more)).requires_grad_()
    y2, _ = module(
        x2, state=carried_state(separate_states, LENGTHS), cu_seqlens=cu_seqlens_from_lengths(more)
    )
    y2_separate, _ = run_separately(module, split(x2, more), separate_states)
    assert_close(y2, y2_separate)
    assert_gradients_close(gradients(module, y2, [x2]), gradients(module, y2_separate, [x2]))


@pytest.mark.parametrize("label", list(BIDIRECTIONAL_SPECS))
def test_packed_bidirectional_equals_separate(label: str) -> None:
    """An encoder layer (causal=False) over packed sequences: every position sees its own sequence only."""
    module = build_mha(BIDIRECTIONAL_SPECS[label], causal=False)
    x = sequence(1, sum(LENGTHS)).requires_grad_()
    y, _ = module(x, cu_seqlens=cu_seqlens_from_lengths(LENGTHS))
    y_separate, _ = run_separately(module, split(x, LENGTHS), [None] * len(LENGTHS))
    assert_close(y, y_separate)
    assert_gradients_close(gradients(module, y, [x]), gradients(module, y_separate, [x]))


@pytest.mark.parametrize("label", list(BIDIRECTIONAL_SPECS))
def test_packed_cross_attention_reads_its_own_source(label: str) -> None:
    """Packed queries over a packed memory (the same N, other lengths) equal each pair alone, with the
    gradients into queries, memory and weights; a later call reads the returned state the same way."""
    module = build_mha(BIDIRECTIONAL_SPECS[label], cross=True)
    x = sequence(1, sum(LENGTHS)).requires_grad_()
    memory = sequence(1, sum(MEMORY_LENGTHS)).requires_grad_()
    offsets = {"cu_seqlens": cu_seqlens_from_lengths(LENGTHS)}
    y, state = module(x, memory=memory, memory_cu_seqlens=cu_seqlens_from_lengths(MEMORY_LENGTHS), **offsets)
    pairs = zip(split(x, LENGTHS), split(memory, MEMORY_LENGTHS), strict=True)
    separate = [module(query, memory=source) for query, source in pairs]
    y_separate = torch.cat([out for out, _ in separate], dim=1)
    assert_close(y, y_separate)
    assert_gradients_close(gradients(module, y, [x, memory]), gradients(module, y_separate, [x, memory]))
    y_read, _ = module(x, state=state, **offsets)
    assert_close(y_read, y)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m, x, c: m(x, cu_seqlens=c, key_padding_mask=torch.zeros(1, 14, dtype=torch.bool)),
            "replaces",
        ),
        (lambda m, x, c: m(x.expand(2, -1, -1), cu_seqlens=c), "B = 1"),
        (lambda m, x, c: m(x, cu_seqlens=c[:-1]), "end at"),
        (lambda m, x, c: m(x, cu_seqlens=c.float()), "int32 or int64"),
    ],
)
@pytest.mark.parametrize("label", ["softmax", "delta-auto", "fwm", "deltanet-auto"])
def test_packed_refusals_name_the_argument(label: str, call, message: str) -> None:
    module = build_mha(CAUSAL_SPECS[label])
    with pytest.raises(ValueError, match=message):
        call(module, sequence(1, 14), cu_seqlens_from_lengths(LENGTHS))


def test_packed_cross_attention_needs_both_offsets() -> None:
    module = build_mha("softmax", cross=True)
    with pytest.raises(ValueError, match="memory_cu_seqlens"):
        module(sequence(1, 14), memory=sequence(1, 15), cu_seqlens=cu_seqlens_from_lengths(LENGTHS))
