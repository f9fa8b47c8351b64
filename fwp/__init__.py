"""fwp: Fast Weight Programmers (linear-attention Transformers with sum and delta update rules)."""

__version__ = "0.1.0"
