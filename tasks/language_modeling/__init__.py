"""Word- or BPE-level language modelling on WikiText-103 or a synthetic stand-in, Transformer-XL batching."""
