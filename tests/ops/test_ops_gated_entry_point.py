"""The gated rules through the one entry point ``fast_weight_attention(..., log_decay=...)``: the whole
sequence (chunk), one token at a time (step) and a sequence split in two with the state carried all
equal the gated oracle in float64 (outputs, final state, every gradient); padding; refusals."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from fwp.ops import FastWeightState, Normalization, dispatch, fast_weight_attention
from tests.ops.gated_cases import GatedProblem, gated_outputs_and_gradients, make_gated_problem
from tests.ops.ops_cases import assert_all_close, features

T = 9


def through_entry_point(problem: GatedProblem, pieces: list[slice]) -> tuple[Tensor, FastWeightState]:
    """The problem's features through ``fast_weight_attention`` call after call over ``pieces`` of the
    sequence, each call continuing the state of the previous one (``backend='auto'``)."""
    base = problem.base
    q, k = features(base)
    normalization = Normalization(denominator=base.normalisation == "denominator")
    state, outputs = FastWeightState(base.W0, base.z0), []
    for piece in pieces:
        y, state = fast_weight_attention(
            q[:, :, piece],
            k[:, :, piece],
            base.v[:, :, piece],
            None if base.beta is None else base.beta[:, :, piece],
            log_decay=problem.log_decay[:, :, piece],
            rule=base.rule,
            normalization=normalization,
            state=state,
            chunk_size=4,
        )
        outputs.append(y)
    return torch.cat(outputs, dim=2), state


SPLITS = {
    "parallel": [slice(0, T)],
    "step": [slice(t, t + 1) for t in range(T)],
    "carry": [slice(0, 5), slice(5, T)],
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("normalisation", ["none", "sum", "denominator"])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_parallel_step_and_carry_equal_the_gated_oracle(rule: str, normalisation: str, split: str) -> None:
    problem = make_gated_problem(rule=rule, normalisation=normalisation, T=T, strongest=-3.0)
    expected = gated_outputs_and_gradients(problem, backend="reference")
    actual = gated_outputs_and_gradients(problem, runner=lambda p: through_entry_point(p, SPLITS[split]))
    assert_all_close(actual, expected, rel=1e-10)


def test_zero_log_decay_is_the_ungated_rule() -> None:
    problem = make_gated_problem(rule="delta", T=T)
    q, k = features(problem.base)
    args = (q, k, problem.base.v, problem.base.beta)
    gated, _ = fast_weight_attention(*args, log_decay=torch.zeros_like(problem.log_decay), rule="delta")
    ungated, _ = fast_weight_attention(*args, rule="delta")
    torch.testing.assert_close(gated, ungated, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["chunk", "reference"])
def test_padded_positions_neither_write_nor_decay(backend: str) -> None:
    """Right padding: row 1's last 3 positions are padding with a strong decay there; its outputs at
    real positions and its final memory equal a run on its 6 real positions (the decay was zeroed)."""
    problem = make_gated_problem(rule="delta", normalisation="denominator", B=2, T=T, strongest=-5.0)
    base = problem.base
    q, k = features(base)
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[1, 6:] = True
    options = {"rule": "delta", "normalization": Normalization(denominator=True), "backend": backend}
    start = FastWeightState(base.W0, base.z0)
    y, state = fast_weight_attention(
        q, k, base.v, base.beta, log_decay=problem.log_decay, state=start, key_padding_mask=mask, **options
    )
    row = slice(1, 2)
    real = [x[row, :, :6] for x in (q, k, base.v, base.beta, problem.log_decay)]
    y_real, state_real = fast_weight_attention(
        *real[:4], log_decay=real[4], state=FastWeightState(base.W0[row], base.z0[row]), **options
    )
    torch.testing.assert_close(y[row, :, :6], y_real, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.W[row], state_real.W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.z[row], state_real.z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "bidirectional"}, "no bidirectional form"),
        ({"normalization": Normalization(denominator=True, denominator_write=True)}, "denominator_write"),
        ({"backend": "triton"}, "backend='triton' has no kernel for the gated rules"),
    ],
)
def test_options_without_a_gated_form_are_refused(options: dict, message: str) -> None:
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=message):
        fast_weight_attention(
            x, x, x, torch.rand(1, 2, 3), log_decay=-torch.rand(1, 2, 3), rule="delta", **options
        )


def test_read_mode_refuses_a_log_decay() -> None:
    state = FastWeightState.zeros(1, 2, 4, 4, denominator=False)
    with pytest.raises(ValueError, match="log_decay"):
        fast_weight_attention(
            torch.randn(1, 2, 3, 4), mode="read", state=state, log_decay=torch.zeros(1, 2, 3)
        )


def test_auto_where_triton_runs_uses_chunk_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA ``auto`` picks Triton for the ungated rules; it has no gated kernel, so the gated call
    runs on chunk (same result as an explicit ``chunk``) with one warning for the process."""
    monkeypatch.setattr(dispatch, "triton_usable", lambda x: True)
    monkeypatch.setattr(dispatch, "_warned_no_gated_triton", False)
    torch.manual_seed(0)
    x, log_decay = torch.randn(1, 2, 5, 4), -torch.rand(1, 2, 5)
    with pytest.warns(UserWarning, match="uses the chunk backend on CUDA"):
        y_auto, _ = fast_weight_attention(x, x, x, log_decay=log_decay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast_weight_attention(x, x, x, log_decay=log_decay)
    y_chunk, _ = fast_weight_attention(x, x, x, log_decay=log_decay, backend="chunk")
    torch.testing.assert_close(y_auto, y_chunk, rtol=0, atol=0)
