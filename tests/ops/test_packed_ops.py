"""Packed sequences (``cu_seqlens``) in ``fwp.ops.fast_weight_attention``: in float64, a packed call equals
running each sequence on its own (read-outs, final memories and the gradients into q, k, v, β,
log_decay and the initial memories), for every rule, normalisation, decay and backend, with lengths of
1 and lengths around the chunk size; and every misuse is refused naming ``cu_seqlens``."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from fwp.ops import (
    FastWeightState,
    Normalization,
    build_feature_map,
    fast_weight_attention,
    fast_weight_recurrence,
    packed_layout,
)
from fwp.ops.packed_layout import PackedLayout, group_by_length, packed_layouts
from fwp.ops.packing import (
    cu_seqlens_from_lengths,
    positions_in_sequence,
    sequence_ids,
    validate_cu_seqlens,
)
from tests.ops.ops_cases import assert_all_close

CHUNK = 4
LENGTHS = (CHUNK + 1, 1, 2 * CHUNK + 3, CHUNK - 1, CHUNK, 1)  # not sorted: groups reorder the sequences
H, D_K, D_V = 2, 3, 2
SMALL_GROUP_COST = 4


@pytest.fixture(autouse=True)
def several_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """A low price per batched call, so that these short sequences are cut into several padded batches
    (with the default price they would be one): the tests then cover the groups' gathers too."""
    monkeypatch.setattr(packed_layout, "GROUP_COST", SMALL_GROUP_COST)


@dataclass(frozen=True)
class Layer:
    """One layer's setting: rule, normalisation, whether it decays, its feature map and mode."""

    rule: str
    normalization: Normalization
    decay: bool = False
    feature_map: str = "elu"
    mode: str = "causal"


DENOMINATOR = Normalization(denominator=True)
LAYERS = {
    "sum": Layer("sum", Normalization()),
    "delta": Layer("delta", Normalization(sum=True), feature_map="dpfp"),
    "gated-sum": Layer("sum", Normalization(), decay=True),
    "gated-delta": Layer("delta", Normalization(sum=True), decay=True),
    "denominator": Layer("sum", DENOMINATOR),
    "sum+denominator": Layer("delta", Normalization(sum=True, denominator=True), feature_map="dpfp"),
    "gated-denominator": Layer("delta", DENOMINATOR, decay=True),
    "denominator_write": Layer("delta", Normalization(denominator=True, denominator_write=True)),
}
BIDIRECTIONAL = {
    "bidirectional": Layer("sum", Normalization(sum=True), mode="bidirectional"),
    "bidirectional-denominator": Layer("sum", DENOMINATOR, mode="bidirectional"),
}


def leaves_of(layer: Layer, lengths: tuple[int, ...], *, initial_state: bool, seed: int = 0) -> dict:
    """Random float64 leaves of ``N = len(lengths)`` packed sequences: q, k ``[1, H, T, d_k]``, v, β,
    log_decay, and (``initial_state``) one ``W_0`` (``z_0``) per sequence."""
    g = torch.Generator().manual_seed(seed)
    T, N = sum(lengths), len(lengths)
    d_dot = build_feature_map(layer.feature_map, D_K)(torch.zeros(1, D_K)).shape[-1]
    leaves = {
        "q": 0.5 * torch.randn(1, H, T, D_K, generator=g, dtype=torch.float64),
        "k": 0.5 * torch.randn(1, H, T, D_K, generator=g, dtype=torch.float64),
        "v": torch.randn(1, H, T, D_V, generator=g, dtype=torch.float64),
    }
    if layer.rule == "delta":
        leaves["beta"] = torch.rand(1, H, T, generator=g, dtype=torch.float64)
    if layer.decay:
        leaves["log_decay"] = -2 * torch.rand(1, H, T, generator=g, dtype=torch.float64)
    if initial_state:
        leaves["W0"] = 0.3 * torch.randn(N, H, d_dot, D_V, generator=g, dtype=torch.float64)
        if layer.normalization.denominator:
            leaves["z0"] = torch.rand(N, H, d_dot, generator=g, dtype=torch.float64)
    return {name: x.requires_grad_() for name, x in leaves.items()}


def attend(
    layer: Layer, leaves: dict, rows: slice, positions: slice, **options
) -> tuple[Tensor, FastWeightState]:
    """The layer on the packed positions ``positions`` of the leaves, from the memories ``rows``."""
    state = None
    if "W0" in leaves:
        state = FastWeightState(leaves["W0"][rows], leaves["z0"][rows] if "z0" in leaves else None)
    beta, log_decay = (
        leaves[name][:, :, positions] if name in leaves else None for name in ("beta", "log_decay")
    )
    return fast_weight_attention(
        leaves["q"][:, :, positions],
        leaves["k"][:, :, positions],
        leaves["v"][:, :, positions],
        beta,
        log_decay=log_decay,
        feature_map=build_feature_map(layer.feature_map, D_K),
        rule=layer.rule,
        normalization=layer.normalization,
        mode=layer.mode,
        state=state,
        chunk_size=CHUNK,
        **options,
    )


def packed(
    layer: Layer, leaves: dict, lengths: tuple[int, ...], backend: str
) -> tuple[Tensor, FastWeightState]:
    """One call on all sequences, packed."""
    everything = slice(None)
    return attend(
        layer, leaves, everything, everything, backend=backend, cu_seqlens=cu_seqlens_from_lengths(lengths)
    )


def separate(
    layer: Layer, leaves: dict, lengths: tuple[int, ...], backend: str
) -> tuple[Tensor, FastWeightState]:
    """One call per sequence, read-outs concatenated along T and memories stacked."""
    offsets = cu_seqlens_from_lengths(lengths).tolist()
    runs = [
        attend(layer, leaves, slice(n, n + 1), slice(start, end), backend=backend)
        for n, (start, end) in enumerate(pairwise(offsets))
    ]
    y = torch.cat([y for y, _ in runs], dim=2)
    z = None if runs[0][1].z is None else torch.cat([state.z for _, state in runs])
    return y, FastWeightState(torch.cat([state.W for _, state in runs]), z)


def outputs_and_gradients(run, layer: Layer, leaves: dict, lengths: tuple[int, ...], backend: str) -> dict:
    """``y``, ``W`` (``z``) of ``run`` and the gradients of one fixed random functional of them."""
    y, state = run(layer, leaves, lengths, backend)
    results = {"y": y, "W": state.W} | ({"z": state.z} if state.z is not None else {})
    g = torch.Generator().manual_seed(7)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in results.values())
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {name: x.detach() for name, x in results.items()} | {
        f"grad_{name}": grad for name, grad in zip(leaves, grads, strict=True)
    }


def assert_packed_equals_separate(
    layer: Layer, lengths: tuple[int, ...], backend: str, *, initial_state: bool
) -> None:
    leaves = leaves_of(layer, lengths, initial_state=initial_state)
    expected = outputs_and_gradients(separate, layer, leaves, lengths, backend)
    actual = outputs_and_gradients(packed, layer, leaves, lengths, backend)
    assert actual["y"].shape == (1, H, sum(lengths), D_V)
    assert actual["W"].shape[0] == len(lengths)
    assert_all_close(actual, expected, rel=1e-10)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("backend", ["reference", "chunk", "step", "auto"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_causal_packed_equals_separate(name: str, backend: str, initial_state: bool) -> None:
    assert_packed_equals_separate(LAYERS[name], LENGTHS, backend, initial_state=initial_state)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("name", list(BIDIRECTIONAL))
def test_bidirectional_packed_equals_separate(name: str, initial_state: bool) -> None:
    assert_packed_equals_separate(BIDIRECTIONAL[name], LENGTHS, "auto", initial_state=initial_state)


def test_one_position_per_sequence_equals_separate_steps() -> None:
    """All lengths 1: the padded batch has T_max = 1, where ``auto`` picks the step backend."""
    assert_packed_equals_separate(LAYERS["gated-delta"], (1, 1, 1), "auto", initial_state=True)


def test_cross_attention_queries_packed_by_their_own_offsets() -> None:
    """Bidirectional with ``query_cu_seqlens``: each sequence's queries (own lengths) read only the
    memory of their own sequence's keys."""
    layer = BIDIRECTIONAL["bidirectional-denominator"]
    key_lengths, query_lengths = (3, 1, 5), (2, 4, 1)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, H, sum(query_lengths), D_K, generator=g, dtype=torch.float64)
    k = torch.randn(1, H, sum(key_lengths), D_K, generator=g, dtype=torch.float64)
    v = torch.randn(1, H, sum(key_lengths), D_V, generator=g, dtype=torch.float64)
    options = {
        "feature_map": build_feature_map("elu", D_K),
        "rule": "sum",
        "normalization": layer.normalization,
    }
    y, memory = fast_weight_attention(
        q,
        k,
        v,
        mode="bidirectional",
        cu_seqlens=cu_seqlens_from_lengths(key_lengths),
        query_cu_seqlens=cu_seqlens_from_lengths(query_lengths),
        **options,
    )
    k_offsets, q_offsets = (
        cu_seqlens_from_lengths(lengths).tolist() for lengths in (key_lengths, query_lengths)
    )
    for n in range(len(key_lengths)):
        keys, queries = slice(k_offsets[n], k_offsets[n + 1]), slice(q_offsets[n], q_offsets[n + 1])
        y_n, memory_n = fast_weight_attention(
            q[:, :, queries], k[:, :, keys], v[:, :, keys], mode="bidirectional", **options
        )
        torch.testing.assert_close(y[:, :, queries], y_n, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(memory.W[n : n + 1], memory_n.W, rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3 * CHUNK + 1), min_size=1, max_size=5).map(tuple),
    name=st.sampled_from(["delta", "gated-delta", "sum+denominator"]),
    group_cost=st.sampled_from([0, SMALL_GROUP_COST, 10**6]),
)
def test_random_lengths_on_the_chunk_backend(lengths: tuple[int, ...], name: str, group_cost: int) -> None:
    """Random lengths, cut into one group per distinct length, a few groups, or one padded batch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packed_layout, "GROUP_COST", group_cost)
        assert_packed_equals_separate(LAYERS[name], lengths, "chunk", initial_state=True)


def test_positions_and_sequence_ids_follow_the_offsets() -> None:
    lengths = (3, 1, 2)
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    assert cu_seqlens.tolist() == [0, 3, 4, 6]
    ids = [n for n, length in enumerate(lengths) for _ in range(length)]
    positions = [t for length in lengths for t in range(length)]
    assert sequence_ids(cu_seqlens).tolist() == ids
    assert positions_in_sequence(cu_seqlens).tolist() == positions
    assert positions_in_sequence(cu_seqlens.int()).tolist() == positions


def test_layout_round_trip_and_padding() -> None:
    cu_seqlens = cu_seqlens_from_lengths([2, 4, 1])
    layout = PackedLayout.from_cu_seqlens(cu_seqlens, groups=((1, 0), (2,)))
    x = torch.arange(14.0).reshape(1, 2, 7, 1)
    first, second = layout.unpack(x)
    assert first.shape == (2, 2, 4, 1) and second.shape == (1, 2, 1, 1)
    assert [padding.tolist() for padding in layout.paddings] == [
        [[False] * 4, [False, False, True, True]],
        [[False]],
    ]
    assert first[0, 1, :, 0].tolist() == [9.0, 10.0, 11.0, 12.0]  # head 1 of sequence 1
    assert first[1, 0, :2, 0].tolist() == [0.0, 1.0] and second[0, 1, 0, 0].item() == 13.0
    assert torch.equal(layout.pack([first, second]), x)
    memories = torch.arange(3.0)
    assert torch.equal(layout.merge_rows(layout.split_rows(memories)), memories)


def test_one_batch_layouts_keep_the_sequence_order() -> None:
    """``packed_layouts(one_batch=True)`` (what attention cores without a packed form use): one padded
    batch, row ``n`` sequence ``n``; the queries' layout follows the keys' rows."""
    q, k = torch.zeros(1, 1, 6, 1), torch.zeros(1, 1, 7, 1)
    keys, queries = packed_layouts(
        q, k, cu_seqlens_from_lengths([2, 4, 1]), cu_seqlens_from_lengths([3, 1, 2]), one_batch=True
    )
    assert keys.groups == queries.groups == ((0, 1, 2),)
    assert keys.paddings[0].shape == (3, 4) and queries.paddings[0].shape == (3, 3)


def test_a_layout_is_built_once_per_offsets_tensor_and_again_after_an_in_place_change() -> None:
    """Layers passing the same offsets share one layout; writing into the offsets tensor (its version
    counter moves) makes a new, checked one instead of reusing the stale layout."""
    q = torch.zeros(1, 1, 7, 1)
    cu_seqlens = cu_seqlens_from_lengths([2, 4, 1])
    first, _ = packed_layouts(q, q, cu_seqlens)
    assert packed_layouts(q, q, cu_seqlens)[0] is first
    assert packed_layouts(q, q, cu_seqlens.clone())[0] is not first
    cu_seqlens[1] = 3
    changed, _ = packed_layouts(q, q, cu_seqlens)
    assert changed.lengths.tolist() == [3, 3, 1]
    cu_seqlens[1] = 7
    with pytest.raises(ValueError, match="cu_seqlens must be strictly increasing"):
        packed_layouts(q, q, cu_seqlens)


def test_groups_trade_padding_against_calls() -> None:
    """The cut minimises padded positions plus ``group_cost`` per group; every sequence is in one group."""
    lengths = [5, 60, 7, 58, 6, 31, 30]
    assert group_by_length(lengths, group_cost=10**6) == [[1, 3, 5, 6, 2, 4, 0]]
    assert group_by_length(lengths, group_cost=10) == [[1, 3], [5, 6], [2, 4, 0]]
    assert sorted(n for group in group_by_length(lengths) for n in group) == list(range(len(lengths)))
    assert len(PackedLayout.from_cu_seqlens(cu_seqlens_from_lengths(LENGTHS)).groups) > 1, (
        "the packed == separate tests should cross group boundaries"
    )


def test_lengths_must_be_positive_integers() -> None:
    with pytest.raises(ValueError, match="length must be >= 1"):
        cu_seqlens_from_lengths([3, 0])
    with pytest.raises(ValueError, match="lengths must be a non-empty 1-D sequence of integers"):
        cu_seqlens_from_lengths([2.0, 1.0])


def refusal_call(**changes) -> None:
    """A small valid packed causal delta call (T = 5: sequences of 2 and 3) with ``changes`` applied."""
    T = changes.pop("T", 5)
    B = changes.pop("B", 1)
    q = torch.rand(B, 1, T, 2)
    arguments = {
        "rule": "delta",
        "cu_seqlens": torch.tensor([0, 2, T]),
        "state": None,
        "mode": "causal",
    } | changes
    beta = None if arguments["mode"] == "read" else torch.rand(B, 1, T)
    k, v = (None, None) if arguments["mode"] == "read" else (q, q)
    fast_weight_attention(q, k, v, beta, **arguments)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cu_seqlens": torch.tensor([0.0, 2.0, 5.0])}, "cu_seqlens must be an int32 or int64 tensor"),
        ({"cu_seqlens": torch.tensor([[0, 2, 5]])}, r"cu_seqlens must be 1-D \[N \+ 1\]"),
        ({"cu_seqlens": torch.tensor([0])}, r"cu_seqlens must be 1-D \[N \+ 1\]"),
        ({"cu_seqlens": torch.tensor([1, 2, 5])}, "cu_seqlens must start at 0 and end at the packed length"),
        (
            {"cu_seqlens": torch.tensor([0, 2, 4])},
            "cu_seqlens must start at 0 and end at the packed length T=5",
        ),
        ({"cu_seqlens": torch.tensor([0, 2, 2, 5])}, "cu_seqlens must be strictly increasing"),
        ({"cu_seqlens": torch.tensor([0, 3, 2, 5])}, "cu_seqlens must be strictly increasing"),
        ({"B": 2}, "cu_seqlens packs N sequences into batch B = 1"),
        ({"key_padding_mask": torch.zeros(1, 5, dtype=torch.bool)}, "cu_seqlens replaces key_padding_mask"),
        ({"mode": "read", "state": FastWeightState.zeros(2, 1, 2, 2, denominator=False)}, "mode='read'"),
        ({"state": FastWeightState.zeros(1, 1, 2, 2, denominator=False)}, "one memory per packed sequence"),
        ({"query_cu_seqlens": torch.tensor([0, 1, 5])}, "query_cu_seqlens is for mode='bidirectional'"),
        ({"cu_seqlens": None, "query_cu_seqlens": torch.tensor([0, 5])}, "query_cu_seqlens needs cu_seqlens"),
    ],
    ids=[
        "float",
        "2-D",
        "no-sequence",
        "not-from-0",
        "not-to-T",
        "empty-sequence",
        "decreasing",
        "batch-2",
        "with-key-padding-mask",
        "read-mode",
        "state-of-another-N",
        "query-offsets-in-causal-mode",
        "query-offsets-alone",
    ],
)
def test_misuse_is_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        refusal_call(**changes)


def test_bidirectional_queries_of_another_length_need_their_offsets() -> None:
    q, k = torch.rand(1, 1, 4, 2), torch.rand(1, 1, 5, 2)
    with pytest.raises(ValueError, match="give query_cu_seqlens"):
        fast_weight_attention(q, k, k, mode="bidirectional", cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="the same number of sequences"):
        fast_weight_attention(
            q,
            k,
            k,
            mode="bidirectional",
            cu_seqlens=torch.tensor([0, 2, 5]),
            query_cu_seqlens=torch.tensor([0, 4]),
        )


def test_validate_cu_seqlens_accepts_int32_offsets() -> None:
    validate_cu_seqlens(torch.tensor([0, 1, 4], dtype=torch.int32), 4)


def test_fast_weight_recurrence_passes_the_offsets_on() -> None:
    """``fast_weight_recurrence(cu_seqlens=…)`` (feature-mapped inputs, ``initial_state`` per sequence)
    equals one recurrence per sequence."""
    g = torch.Generator().manual_seed(5)
    lengths = (3, 6, 2)
    q, k = (torch.rand(1, H, 11, D_K, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, H, 11, D_V, generator=g, dtype=torch.float64)
    beta = torch.rand(1, H, 11, generator=g, dtype=torch.float64)
    W0 = torch.randn(3, H, D_K, D_V, generator=g, dtype=torch.float64)
    options = {"rule": "delta", "denominator": False, "backend": "chunk", "chunk_size": CHUNK}
    y, state = fast_weight_recurrence(
        q,
        k,
        v,
        beta,
        initial_state=FastWeightState(W0),
        cu_seqlens=cu_seqlens_from_lengths(lengths),
        **options,
    )
    offsets = cu_seqlens_from_lengths(lengths).tolist()
    for n, (start, end) in enumerate(pairwise(offsets)):
        positions = slice(start, end)
        y_n, state_n = fast_weight_recurrence(
            q[:, :, positions],
            k[:, :, positions],
            v[:, :, positions],
            beta[:, :, positions],
            initial_state=FastWeightState(W0[n : n + 1]),
            **options,
        )
        torch.testing.assert_close(y[:, :, positions], y_n, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.W[n : n + 1], state_n.W, rtol=1e-12, atol=1e-12)


def test_half_precision_inputs_under_autocast() -> None:
    """bf16 inputs under autocast: the packed read-out comes back in bf16, the memories in float32,
    and both agree with separate calls to bf16 rounding."""
    layer = LAYERS["gated-delta"]
    leaves = {
        name: x.detach().to(torch.bfloat16)
        for name, x in leaves_of(layer, LENGTHS, initial_state=False).items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = packed(layer, leaves, LENGTHS, "chunk")
        y_separate, state_separate = separate(layer, leaves, LENGTHS, "chunk")
    assert y.dtype == torch.bfloat16 and state.W.dtype == torch.float32
    torch.testing.assert_close(y, y_separate, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state.W, state_separate.W, rtol=1e-5, atol=1e-5)
