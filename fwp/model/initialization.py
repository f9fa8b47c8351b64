"""Parameter initialisation schemes of the language-model backbone.

``txl``: Transformer-XL's ``weights_init`` (its ``--init normal`` defaults, which the paper's
language-model runs used): every linear map and embedding table ``N(0, 0.02²)``, every bias 0,
LayerNorm weights ``N(1, 0.02²)``, the adaptive input/softmax projections ``N(0, 0.01²)``, the adaptive
softmax's cluster weights ``N(0, 0.02²)`` and cluster biases 0. ``torch``: the modules' own defaults.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from fwp.model.adaptive import AdaptiveLogSoftmax, ClusterTables

Init = Literal["torch", "txl"]
INITS = ("torch", "txl")

TXL_STD = 0.02
TXL_PROJECTION_STD = 0.01


def transformer_xl_init(model: nn.Module) -> None:
    """Re-initialise ``model``'s parameters in place with Transformer-XL's scheme (module docstring)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, 0.0, TXL_STD)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.normal_(module.weight, 1.0, TXL_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ClusterTables):
            for table in module.tables:
                nn.init.normal_(table, 0.0, TXL_STD)
            for projection in module.projections:
                nn.init.normal_(projection, 0.0, TXL_PROJECTION_STD)
            if isinstance(module, AdaptiveLogSoftmax):
                for bias in module.biases:
                    nn.init.zeros_(bias)
                nn.init.normal_(module.cluster_weight, 0.0, TXL_STD)
                nn.init.zeros_(module.cluster_bias)
