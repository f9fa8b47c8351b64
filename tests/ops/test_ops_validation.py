"""Bad arguments of ``fast_weight_recurrence`` fail with a ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from fwp.ops import FastWeightState, fast_weight_recurrence

B, H, T, D, D_V = 2, 3, 5, 4, 6


def _good() -> dict:
    return {
        "q": torch.rand(B, H, T, D),
        "k": torch.rand(B, H, T, D),
        "v": torch.rand(B, H, T, D_V),
        "beta": torch.rand(B, H, T),
        "rule": "delta",
    }


def _with(**changes) -> dict:
    return _good() | changes


def _nan_at_start(shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.rand(*shape)
    x.view(-1)[0] = float("nan")
    return x


BAD_ARGUMENTS = {
    "q not 4-d": (_with(q=torch.rand(B, T, D)), r"^q must be \[B, H, T, D\]"),
    "k shape differs from q": (_with(k=torch.rand(B, H, T, D + 1)), r"q and k must have the same shape"),
    "v length differs": (_with(v=torch.rand(B, H, T + 1, D_V)), r"^v must share \[B, H, T\]"),
    "integer q": (_with(q=torch.ones(B, H, T, D, dtype=torch.long)), r"^q must be a floating-point"),
    "beta missing for delta": (_with(beta=None), r"^beta is required by rule='delta'"),
    "beta shape": (_with(beta=torch.rand(B, H, T, 1)), r"^beta must be \[B, H, T\]"),
    "beta given for sum": (_with(rule="sum"), r"^beta is only used by rule='delta'"),
    "unknown rule": (_with(rule="hebbian"), r"^rule must be one of .*'hebbian'"),
    "state.W shape": (
        _with(initial_state=FastWeightState(torch.zeros(B, H, D_V, D))),
        r"^state\.W must be \[B, H, d_dot, d_v\]",
    ),
    "state.z missing with denominator": (
        _with(denominator=True, initial_state=FastWeightState(torch.zeros(B, H, D, D_V))),
        r"^state\.z must be \[B, H, d_dot\]",
    ),
    "state.z without denominator": (
        _with(initial_state=FastWeightState(torch.zeros(B, H, D, D_V), torch.zeros(B, H, D))),
        r"^state\.z is given but denominator=False",
    ),
    "chunk_size": (_with(chunk_size=0), r"^chunk_size must be >= 1, got chunk_size=0"),
    "unknown backend": (
        _with(backend="cuda"),
        r"^backend must be one of \['auto', 'reference', 'step', 'chunk', 'triton'\]",
    ),
    "non-finite k": (_with(k=_nan_at_start((B, H, T, D)), check_finite=True), r"^k has 1 non-finite"),
    "non-finite beta": (_with(beta=_nan_at_start((B, H, T)), check_finite=True), r"^beta has 1 non-finite"),
    "non-finite state": (
        _with(initial_state=FastWeightState(_nan_at_start((B, H, D, D_V))), check_finite=True),
        r"^state\.W has 1 non-finite",
    ),
    "non-finite state.z": (
        _with(
            denominator=True,
            initial_state=FastWeightState(torch.zeros(B, H, D, D_V), _nan_at_start((B, H, D))),
            check_finite=True,
        ),
        r"^state\.z has 1 non-finite",
    ),
    "negative eps": (_with(eps=-1.0), r"^eps must be >= 0, got eps=-1.0"),
    "beta on another device": (
        _with(beta=torch.rand(B, H, T, device="meta")),
        r"^q, k, v, beta and the state must be on one device, got .*beta on meta",
    ),
}


@pytest.mark.parametrize(("arguments", "message"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_argument_is_named(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fast_weight_recurrence(**arguments)


def test_fwp_debug_turns_on_finite_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = _with(v=_nan_at_start((B, H, T, D_V)))
    monkeypatch.setenv("FWP_DEBUG", "0")
    y, _ = fast_weight_recurrence(**arguments, backend="chunk")
    assert not torch.isfinite(y).all()
    monkeypatch.setenv("FWP_DEBUG", "1")
    with pytest.raises(ValueError, match=r"^v has 1 non-finite"):
        fast_weight_recurrence(**arguments)


def test_empty_sequence_is_rejected():
    import torch

    from fwp.ops import fast_weight_recurrence

    q = torch.zeros(1, 1, 0, 3)
    with pytest.raises(ValueError, match="T=0"):
        fast_weight_recurrence(q, q, q)


def test_any_float64_input_makes_the_recurrence_float64() -> None:
    """float32 keys with float64 values: the values are not rounded to float32."""
    arguments = _with(v=torch.rand(B, H, T, D_V, dtype=torch.float64), rule="sum", beta=None)
    y, state = fast_weight_recurrence(**arguments)
    assert y.dtype == state.W.dtype == torch.float64
