"""init='txl': Transformer-XL's initialisation (weights_init of its train.py) on every parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fwp.model import DecoderLM, DecoderLMConfig
from fwp.model.adaptive import AdaptiveInput, AdaptiveLogSoftmax


def build(init: str, **options) -> DecoderLM:
    torch.manual_seed(0)
    kwargs = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "attention": "delta"}
    return DecoderLM(3000, DecoderLMConfig(**kwargs, adaptive_cutoffs=[500, 1500], init=init, **options))


def assert_normal(tensor: torch.Tensor, mean: float, std: float) -> None:
    assert abs(tensor.mean().item() - mean) < 4 * std / tensor.numel() ** 0.5 + 1e-3
    assert abs(tensor.std().item() / std - 1) < 4 / (2 * tensor.numel()) ** 0.5, (tensor.std().item(), std)


@pytest.mark.parametrize(
    "options", [{"tie_embeddings": True}, {"tie_embeddings": False, "adaptive_div_value": 2.0}]
)
def test_every_parameter_follows_transformer_xl(options: dict) -> None:
    model = build("txl", **options)
    seen = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert_normal(module.weight, 0.0, 0.02)
            if module.bias is not None:
                assert not module.bias.any()
        elif isinstance(module, nn.LayerNorm):
            assert_normal(module.weight, 1.0, 0.02)
            assert not module.bias.any()
        elif isinstance(module, AdaptiveLogSoftmax | AdaptiveInput):
            for table in module.tables:
                assert_normal(table, 0.0, 0.02)
            for projection in module.projections:
                assert_normal(projection, 0.0, 0.01)
            if isinstance(module, AdaptiveLogSoftmax):
                assert_normal(module.cluster_weight, 0.0, 0.02)
                assert not module.cluster_bias.any() and not any(b.any() for b in module.biases)
        else:
            continue
        seen |= {id(p) for p in module.parameters()}
    assert seen == {id(p) for p in model.parameters()}, "a parameter escaped the scheme"


def test_torch_init_keeps_the_module_defaults() -> None:
    """The option changes something: PyTorch's defaults are not Transformer-XL's."""
    torch_model, txl_model = build("torch", tie_embeddings=True), build("txl", tie_embeddings=True)
    norm = next(m for m in torch_model.modules() if isinstance(m, nn.LayerNorm))
    assert (norm.weight == 1).all()
    linear = next(m for m in torch_model.modules() if isinstance(m, nn.Linear))
    assert linear.weight.std() > 0.04
    assert txl_model.adaptive_softmax.tables[0].std() < 0.03 < torch_model.adaptive_softmax.tables[0].std()


def test_unknown_init_is_named() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        DecoderLM(50, DecoderLMConfig(d_model=16, n_heads=2, init="xavier"))
