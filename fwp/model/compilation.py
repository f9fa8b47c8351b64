"""Compiling a backbone for speed: each Transformer block under ``torch.compile(fullgraph=True)``.

"Regional" compilation: the blocks of a stack run the same code, so they share one compiled graph and
compiling a 16-layer model costs about one block's compile (the whole stack as one graph took about
400 s per graph on a 2-core CPU, docs/ops.md). ``nn.Module.compile`` compiles a module's ``forward`` in
place: parameters, buffers and ``state_dict`` keys stay as they are, so checkpoints of compiled and
eager runs are interchangeable. The fast-weight recurrences are ``torch.library`` custom ops, so no
attention preset breaks the graph; embeddings, adaptive softmax and the loss stay eager.
"""

from __future__ import annotations

from torch import nn

from fwp.model.block import TransformerBlock


def compile_blocks(model: nn.Module, *, backend: str = "inductor") -> int:
    """Compile every ``TransformerBlock`` inside ``model`` in place with ``torch.compile(fullgraph=True,
    backend=backend)``; returns how many there are (blocks already compiled are left alone, so calling
    it again is harmless)."""
    blocks = [module for module in model.modules() if isinstance(module, TransformerBlock)]
    for block in blocks:
        if block._compiled_call_impl is None:
            block.compile(fullgraph=True, backend=backend)
    return len(blocks)
