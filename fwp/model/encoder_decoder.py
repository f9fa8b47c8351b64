"""Encoder-decoder Transformer (Vaswani et al. 2017) for sequence-to-sequence tasks.

The encoder reads the source ``[B, S]`` (right-padded; ``src_padding_mask`` True at pads) with
non-causal self-attention; the decoder reads the shifted target ``[B, T]`` with causal self-attention
and cross-attention over the encoder's output. Each of the three attentions has its own registry
spec (fast-weight encoders and cross-attentions need a core that supports bidirectional use: the
sum rule). ``share_embeddings`` shares one embedding among source, target and the output layer;
otherwise the encoder has its own and the decoder's input embedding is tied to its output layer.

Packed sequences (training without padding): ``src`` ``[1, S]`` holds ``N`` sources end to end (offsets
``src_cu_seqlens`` ``[N + 1]``) and ``tgt_in`` ``[1, T]`` their ``N`` targets (``tgt_cu_seqlens``); each
pair is encoded and decoded as if alone (positions restart, target ``n`` attends to source ``n`` only).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fwp.model.config import EncoderDecoderConfig
from fwp.model.decoder_lm import check_tokens
from fwp.model.stack import InputEncoding, TransformerStack, token_embedding


class EncoderDecoder(nn.Module):
    """``encode`` the source once, then ``decode`` the target in parallel (training, scoring) or one
    token at a time with the returned states (generation, beam search with ``reorder_states``).

    Shaped by ``config`` (``EncoderDecoderConfig``; None: its defaults) over ``vocab_size`` tokens of
    which ``pad_id`` pads (its embedding row stays zero)."""

    def __init__(
        self, vocab_size: int, config: EncoderDecoderConfig | None = None, *, pad_id: int = 0
    ) -> None:
        super().__init__()
        config = EncoderDecoderConfig.of(config)
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be in [0, vocab_size={vocab_size}), got pad_id={pad_id}")
        self.config = config
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.decoder_embedding = token_embedding(vocab_size, config.d_model, padding_idx=pad_id)
        self.encoder_embedding = self.decoder_embedding
        if not config.share_embeddings:
            self.encoder_embedding = token_embedding(vocab_size, config.d_model, padding_idx=pad_id)
        encoding = {
            "positional": config.positional,
            "max_positions": config.max_positions,
            "dropout": config.dropout,
        }
        self.encoder_input = InputEncoding(config.d_model, **encoding)
        self.decoder_input = InputEncoding(config.d_model, **encoding)
        self.encoder = TransformerStack(
            config.block, config.n_encoder_layers, config.encoder_attention, causal=False
        )
        self.decoder = TransformerStack(
            config.block,
            config.n_decoder_layers,
            config.decoder_attention,
            causal=True,
            cross_attention=config.cross_attention,
        )

    @property
    def position_limit(self) -> int | None:
        """The positions the decoder can encode: ``max_positions`` of a learned table, None (no
        limit) for sinusoidal or no positions."""
        return self.config.max_positions if self.config.positional == "learned" else None

    def encode(
        self, src: Tensor, src_padding_mask: Tensor | None, *, cu_seqlens: Tensor | None = None
    ) -> Tensor:
        """Source tokens ``[B, S]`` (pads marked True in ``src_padding_mask`` ``[B, S]``; or ``[1, S]``
        packed with offsets ``cu_seqlens``) → memory ``[B, S, d_model]``; outputs at pad positions are
        meaningless and never attended to."""
        check_tokens("src", src)
        x = self.encoder_input(self.encoder_embedding(src), 0, cu_seqlens)
        memory, _ = self.encoder(x, key_padding_mask=src_padding_mask, cu_seqlens=cu_seqlens)
        return memory

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor | None,
        memory_padding_mask: Tensor | None,
        *,
        states: list | None = None,
        position_offset: int = 0,
        cu_seqlens: Tensor | None = None,
        memory_cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        """Target input tokens ``[B, T]`` → logits ``[B, T, V]`` and one ``CrossBlockState`` per decoder
        layer. Given ``states`` from a previous call, self-attention continues them and
        cross-attention reads the cached memory keys (``memory`` may then be None). Packed: ``tgt_in``
        ``[1, T]`` with offsets ``cu_seqlens`` over a packed memory with offsets ``memory_cu_seqlens``."""
        check_tokens("tgt_in", tgt_in)
        x = self.decoder_input(self.decoder_embedding(tgt_in), position_offset, cu_seqlens)
        x, states = self.decoder(
            x,
            states=states,
            memory=memory,
            memory_padding_mask=memory_padding_mask,
            cu_seqlens=cu_seqlens,
            memory_cu_seqlens=memory_cu_seqlens,
        )
        return F.linear(x, self.decoder_embedding.weight), states

    def forward(
        self,
        src: Tensor,
        src_padding_mask: Tensor | None,
        tgt_in: Tensor,
        *,
        src_cu_seqlens: Tensor | None = None,
        tgt_cu_seqlens: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits ``[B, T, V]`` of ``tgt_in`` ``[B, T]`` given the source ``[B, S]``; or
        of ``N`` packed pairs (module docstring), ``[1, T, V]``."""
        if (src_cu_seqlens is None) != (tgt_cu_seqlens is None):
            raise ValueError(
                "packed pairs need the offsets of both the sources (src_cu_seqlens) and the targets "
                "(tgt_cu_seqlens), got only one"
            )
        memory = self.encode(src, src_padding_mask, cu_seqlens=src_cu_seqlens)
        logits, _ = self.decode(
            tgt_in, memory, src_padding_mask, cu_seqlens=tgt_cu_seqlens, memory_cu_seqlens=src_cu_seqlens
        )
        return logits
