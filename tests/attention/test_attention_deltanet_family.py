"""The DeltaNet family presets (``deltanet``, ``gated_deltanet``, ``gla``) and their parts: parallel ==
step == carry in float64 through ``MultiHeadAttention`` (outputs and every gradient), padding, the
refusals, the decay and β parametrisations, a tiny LM that learns, one compiled block, and the
checkpoint keys of the paper's presets (unchanged by the new parts)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fwp.attention import MultiHeadAttention, build_attention
from fwp.attention.parametrisation import GatedDeltaNetDecay
from fwp.model import DecoderLM, DecoderLMConfig, export_fast_weights, import_fast_weights
from fwp.model.block import TransformerBlock
from fwp.model.config import BlockConfig

FAMILY = ("deltanet", "gated_deltanet", "gla")
D_MODEL, HEADS, T = 16, 2, 11
SPLITS = {
    "parallel": [slice(0, T)],
    "step": [slice(t, t + 1) for t in range(T)],
    "carry": [slice(0, 3), slice(3, 8), slice(8, T)],
}


def layer(attention: object, **options: object) -> MultiHeadAttention:
    return MultiHeadAttention(D_MODEL, HEADS, attention, **options).double()


def run_in_pieces(module: MultiHeadAttention, x: Tensor, pieces: list[slice]) -> tuple[Tensor, object]:
    """The layer call after call over ``pieces`` of the sequence, each continuing the previous state."""
    state, outputs = None, []
    for piece in pieces:
        y, state = module(x[:, piece], state=state)
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def outputs_and_gradients(module: MultiHeadAttention, x: Tensor, pieces: list[slice]) -> dict[str, Tensor]:
    """``y`` and the gradients of a fixed random functional of it w.r.t. ``x`` and every parameter."""
    x = x.detach().requires_grad_()
    y, _ = run_in_pieces(module, x, pieces)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    parameters = dict(module.named_parameters())
    grads = torch.autograd.grad((y * weight).sum(), [x, *parameters.values()])
    return {"y": y.detach(), "grad_x": grads[0]} | {
        f"grad_{name}": grad for name, grad in zip(parameters, grads[1:], strict=True)
    }


@pytest.mark.parametrize("split", ["step", "carry"])
@pytest.mark.parametrize("name", FAMILY)
def test_parallel_step_and_carry_agree_with_gradients(name: str, split: str) -> None:
    module = layer(name)
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    expected = outputs_and_gradients(module, x, SPLITS["parallel"])
    actual = outputs_and_gradients(module, x, SPLITS[split])
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        torch.testing.assert_close(actual[key], want, rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_the_convolution_state_is_the_last_inputs(name: str) -> None:
    """The carried convolution state holds the last kernel − 1 = 3 inputs of q, k, v; cut from the graph,
    reordered (segment carry, beam search) and saved in a checkpoint's form like the memory."""
    module = layer(name)
    x = torch.randn(3, T, D_MODEL, dtype=torch.float64)
    _, state = module(x)
    q, k, v = module.split_heads(module.qkv_proj(x), (module.d_head,) * 3 + module.beta_sizes)[:3]
    channels = torch.cat([q, k, v], dim=-1).transpose(1, 2).reshape(3, T, -1)
    torch.testing.assert_close(state.conv, channels[:, -3:], rtol=0, atol=0)
    index = torch.tensor([2, 0])
    reordered = state.index_select(index).detach()
    assert not reordered.conv.requires_grad
    torch.testing.assert_close(reordered.conv, state.conv[index], rtol=0, atol=0)
    torch.testing.assert_close(reordered.W, state.W[index], rtol=0, atol=0)
    saved = import_fast_weights(export_fast_weights([state]))[0]
    torch.testing.assert_close(saved.conv, state.conv, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_right_padding_changes_nothing_at_the_real_positions(name: str) -> None:
    module = layer(name)
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    mask = torch.zeros(2, T, dtype=torch.bool)
    mask[1, 7:] = True
    y, _ = module(x, key_padding_mask=mask)
    y_real, _ = module(x[1:, :7])
    torch.testing.assert_close(y[1:, :7], y_real, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FAMILY)
def test_bidirectional_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ValueError, match="bidirectional mode") as error:
        layer(name, causal=False)
    assert ("delta rule's memory depends on the order" in str(error.value)) == (name != "gla")
    assert ("decay orders the writes" in str(error.value)) == (name != "deltanet")


def test_a_decay_with_the_triton_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend='triton' has no kernel for the gated rules"):
        build_attention({"name": "gla", "backend": "triton"}, d_head=8)


def test_negative_eigenvalues_need_beta() -> None:
    with pytest.raises(ValueError, match="allow_negative_eigenvalues scales β"):
        build_attention({"name": "gla", "allow_negative_eigenvalues": True}, d_head=8)


def test_beta_in_zero_two_with_negative_eigenvalues() -> None:
    """β = 2·sigmoid(unit): the delta rule may then flip a direction of the memory (eigenvalue < 0)."""
    plain = layer("deltanet")
    doubled = layer({"name": "deltanet", "allow_negative_eigenvalues": True})
    unit = [torch.tensor([[[[-30.0], [0.0], [30.0]]]], dtype=torch.float64)]
    torch.testing.assert_close(doubled.write_strength(unit), 2 * plain.write_strength(unit))
    torch.testing.assert_close(doubled.write_strength(unit), torch.tensor([[[0.0, 1.0, 2.0]]]).double())


def test_gated_deltanet_decay_formula_and_initialisation() -> None:
    """``log α = −exp(A_log)·softplus(x W_a + dt_bias)``; ``A`` starts in (0, 16) and
    ``softplus(dt_bias)`` in [1e-3, 1e-1] (Gated DeltaNet's code)."""
    decay = GatedDeltaNetDecay(D_MODEL, 64).double()
    A = decay.A_log.exp()
    assert ((A > 0) & (A < 16)).all()
    dt = F.softplus(decay.dt_bias)
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 1e-1 + 1e-9).all()
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    got = decay(x)
    b, h, t = 1, 7, 3
    a = (x[b, t] @ decay.a_proj.weight[h]).item()
    expected = -math.exp(decay.A_log[h].item()) * math.log1p(math.exp(a + decay.dt_bias[h].item()))
    assert got.shape == (2, 64, 5)
    assert got[b, h, t].item() == pytest.approx(expected, rel=1e-12)


def test_output_gate_is_rmsnorm_times_silu_of_the_gate() -> None:
    module = layer("gla")
    x = torch.randn(1, 4, D_MODEL, dtype=torch.float64)
    y = torch.randn(1, HEADS, 4, D_MODEL // HEADS, dtype=torch.float64)
    norm = module.output_norm
    gate = (x @ norm.g_proj.weight.T).view(1, 4, HEADS, -1).transpose(1, 2)
    rms = y / torch.sqrt((y * y).mean(dim=-1, keepdim=True) + 1e-5) * norm.norm.weight
    torch.testing.assert_close(norm(y, x), rms * gate * torch.sigmoid(gate))


@pytest.mark.parametrize("name", FAMILY)
def test_a_tiny_lm_learns(name: str) -> None:
    """A few Adam steps on one batch of a repeating sequence lower the loss through ``DecoderLM``."""
    config = DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=16, attention=name, dropout=0.0)
    model = DecoderLM(11, config)
    tokens = torch.arange(24).remainder(5).repeat(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", FAMILY)
def test_a_block_compiles_as_one_graph(name: str) -> None:
    """``torch.compile(fullgraph=True)`` (aot_eager: forward and backward traced) of a block with the
    preset gives the eager output and input gradient in float64."""
    torch._dynamo.reset()
    block = TransformerBlock(BlockConfig(D_MODEL, HEADS, 16, dropout=0.0), name).double()
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    eager, _ = block(x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    compiled_block = torch.compile(block, backend="aot_eager", fullgraph=True)
    out, _ = compiled_block(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch._dynamo.reset()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(grad, eager_grad)


PAPER_PRESET_KEYS = {
    "linear": ["out_proj.weight", "qkv_proj.weight"],
    "dpfp": ["out_proj.weight", "qkv_proj.weight"],
    "delta": ["out_proj.weight", "qkv_proj.weight"],
    "performer": ["core.phi.omega", "out_proj.weight", "qkv_proj.weight"],
    "softmax": ["out_proj.weight", "qkv_proj.weight"],
}


@pytest.mark.parametrize("name", PAPER_PRESET_KEYS)
def test_the_paper_presets_keep_their_checkpoint_keys(name: str) -> None:
    """The DeltaNet parts are built only when asked for: old checkpoints still load."""
    assert sorted(layer(name).state_dict()) == PAPER_PRESET_KEYS[name]


@pytest.mark.parametrize("name", FAMILY)
def test_a_bare_core_refuses_to_run_without_its_layer_parts(name: str) -> None:
    """A model that projects q, k, v itself and calls the core would lose the convolution, the decay
    and the output gate (they live in MultiHeadAttention): refused, naming them."""
    core = build_attention(name, d_head=4)
    x = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="output_gate=True") as error:
        core(x, x, x, torch.rand(1, 1, 3) if core.uses_beta else None)
    assert ("short_conv=4" in str(error.value)) == (name != "gla")


def test_cross_attention_refuses_a_short_convolution() -> None:
    spec = {"name": "fast_weight", "feature_map": "elu", "rule": "sum", "short_conv": 4}
    with pytest.raises(ValueError, match="short convolution runs along the sequence"):
        layer(spec, cross=True)


def test_a_state_without_the_convolution_inputs_is_refused() -> None:
    """Continuing a deltanet layer from a state that lost its ``conv`` (e.g. built by hand) would
    convolve with zeros instead of the previous inputs: refused."""
    module = layer("deltanet")
    _, state = module(torch.randn(1, 3, D_MODEL, dtype=torch.float64))
    state.conv = None
    with pytest.raises(ValueError, match=r"without them"):
        module(torch.randn(1, 2, D_MODEL, dtype=torch.float64), state=state)


@pytest.mark.parametrize("name", FAMILY)
def test_bf16_autocast_runs_without_warnings(name: str) -> None:
    """Under bf16 autocast the output norm ran on bf16 heads with a float32 weight, and PyTorch warned
    (once per process) that it could not use the fused kernel; it now normalises in the weight's dtype."""
    module = MultiHeadAttention(D_MODEL, HEADS, name)
    x = torch.randn(2, T, D_MODEL)
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("error")
        y, _ = module(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
