"""``torch.compile(model, fullgraph=True)`` of the backbones equals eager, forward and backward.

``fullgraph=True`` turns any graph break into an error, so every test here also proves that the
model traces into one graph per call (the fast-weight recurrences as ``fwp::`` custom ops). The
preset checks use the ``aot_eager`` backend: it traces forward and backward through the fake
implementations and the registered autograd like inductor, without generating code (seconds instead
of minutes on the shared CPU); one test compiles a tiny model with inductor.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from fwp.model import DecoderLM, DecoderLMConfig
from tests.model.model_cases import PRESETS, VOCAB, tiny_lm, tokens
from tests.model.test_encoder_decoder import ATTENTION_TRIPLES, tiny_seq2seq

LM_ATTENTIONS: dict[str, Any] = {name: name for name in PRESETS} | {
    "sum-and-denominator": {"name": "fast_weight", "normalization": ["sum", "denominator"]},
    "denominator-write": {
        "name": "fast_weight",
        "feature_map": "elu",
        "normalization": ["sum", "denominator"],
        "denominator_write": True,
    },
    "fwm": {"class_path": "fwp.attention.fwm.FastWeightMemoryAttention"},
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model: Any, backend: str = "aot_eager") -> Any:
    """``model`` (a module or a function) compiled as one graph per call: any graph break raises."""
    return torch.compile(model, backend=backend, fullgraph=True)


def gradients(model: nn.Module) -> dict[str, Tensor]:
    """The parameter gradients of ``model``, which are then reset."""
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def lm_stream(model: nn.Module, x: Tensor) -> tuple[Tensor, list]:
    """The three modes in one stream: a parallel segment (no state), a carried segment (T = 4, state
    continued) and a generation step (T = 1); the logits of all and the final states."""
    first, states = model(x[:, :5])
    second, states = model(x[:, 5:9], states=states, position_offset=5)
    third, states = model(x[:, 9:10], states=states, position_offset=9)
    return torch.cat([first, second, third], dim=1), states


def flat_states(states: Any) -> list[Tensor]:
    """Every tensor in a (nested) list of per-layer states, in order."""
    if isinstance(states, Tensor):
        return [states]
    if isinstance(states, list | tuple):
        return [t for state in states for t in flat_states(state)]
    if states is None:
        return []
    return [t for value in vars(states).values() for t in flat_states(value)]


def assert_same_run(model: nn.Module, run: Any, *, whole_run: bool = False) -> None:
    """``run(model)`` and ``run(compiled(model))`` (with ``whole_run``: ``run`` compiled as one function
    of ``model``, for runs that call methods other than ``forward``) give the same outputs, states and
    gradients in float64. The loss is a fixed random projection of the outputs, so that every output
    position gets a distinct gradient."""
    results = []
    compiled_run = compiled(run) if whole_run else lambda m: run(compiled(m))
    for candidate_run in (run, compiled_run):
        out, states = candidate_run(model)
        weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
        (out * weights).sum().backward()
        results.append((out.detach(), [s.detach() for s in flat_states(states)], gradients(model)))
    (out, states, grads), (c_out, c_states, c_grads) = results
    torch.testing.assert_close(c_out, out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(c_states, states, rtol=1e-9, atol=1e-10)
    assert c_grads.keys() == grads.keys() and grads
    torch.testing.assert_close(c_grads, grads, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("attention", LM_ATTENTIONS.values(), ids=LM_ATTENTIONS.keys())
def test_decoder_lm_compiles_to_one_graph_and_equals_eager(attention: Any) -> None:
    """Parallel, carried-state and step mode, forward and backward, float64. Before the chunk
    recurrence became a custom op (and the backend lookup stopped calling ``importlib``), every
    fast-weight preset raised a graph-break error here."""
    model = tiny_lm(attention, n_layers=1, positional="learned", max_positions=16)
    x = tokens(length=10)
    assert_same_run(model, lambda m: lm_stream(m, x))


@pytest.mark.parametrize("triple", ATTENTION_TRIPLES.values(), ids=ATTENTION_TRIPLES.keys())
def test_encoder_decoder_compiles_to_one_graph_and_equals_eager(triple: tuple[str, str, str]) -> None:
    """Teacher-forced decoding over a padded source (bidirectional fast-weight memory, cross-attention
    over it), then one decoding step reading the cached cross-attention state; float64."""
    model = tiny_seq2seq(triple, n_encoder_layers=1, n_decoder_layers=1)
    src, tgt = tokens(length=7), tokens(length=6)
    mask = torch.zeros_like(src, dtype=torch.bool)
    mask[0, 5:] = True

    def run(m: nn.Module) -> tuple[Tensor, list]:
        memory = m.encode(src, mask)
        logits, states = m.decode(tgt[:, :5], memory, mask)
        step, states = m.decode(tgt[:, 5:], None, None, states=states, position_offset=5)
        return torch.cat([logits, step], dim=1), states

    assert_same_run(model, run, whole_run=True)


def test_performer_redraw_in_training_compiles_and_draws_like_eager() -> None:
    """Training mode redraws FAVOR+'s Ω at the start of a sequence (random draw, QR, in-place copy into
    the buffer): inside the graph, with the same draw as eager for the same seed."""
    model = DecoderLM(
        VOCAB, DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, attention="performer", dropout=0.0)
    )
    model = model.double().train()
    omega = model.stack.blocks[0].self_attention.core.phi.omega
    x = tokens(length=6)
    draws, outputs = [], []
    for candidate in (model, compiled(model)):
        with torch.no_grad():
            omega.zero_()
        torch.manual_seed(3)
        outputs.append(candidate(x)[0].detach())
        assert omega.abs().min() > 0  # the buffer was overwritten by the draw
        draws.append(omega.clone())
    torch.testing.assert_close(draws[1], draws[0])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-9, atol=1e-10)


def test_bf16_autocast_compiles_with_the_recurrence_in_float32() -> None:
    """Under bf16 autocast the fast-weight layers switch autocast off around their float32 recurrence:
    inside the graph too (bf16 output, float32 state, eager's values and gradients)."""
    model = DecoderLM(
        VOCAB, DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, attention="delta", dropout=0.0)
    )
    model = model.eval()
    x = tokens(length=9)
    results = []
    for candidate in (model, compiled(model)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, states = candidate(x)
        out.float().sum().backward()
        assert out.dtype == torch.bfloat16 and states[0].W.dtype == torch.float32
        results.append((out.float().detach(), states[0].W.detach(), gradients(model)))
    torch.testing.assert_close(results[1], results[0], rtol=1e-2, atol=1e-2)


def test_inductor_compiles_a_tiny_delta_lm(capsys: pytest.CaptureFixture[str]) -> None:
    """The one test with code generation (inductor, C++ on CPU): forward and backward of a delta-rule
    model equal eager in float32; prints the warm-up cost (first compiled call) for docs/ops.md."""
    model = DecoderLM(
        VOCAB, DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, attention="delta", dropout=0.0)
    ).eval()
    x = tokens(length=8)
    eager_out, _ = model(x)
    eager_out.sum().backward()
    eager_grads = gradients(model)
    fast = compiled(model, backend="inductor")
    start = time.perf_counter()
    out, _ = fast(x)
    out.sum().backward()
    warm_up = time.perf_counter() - start
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradients(model), eager_grads, rtol=1e-4, atol=1e-5)
    with capsys.disabled():
        print(f"\ninductor warm-up (first forward + backward of a tiny delta LM): {warm_up:.1f} s")
