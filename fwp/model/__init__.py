"""The backbone shared by all tasks: typed configs with named presets, Transformer blocks, a
decoder-only language model, an encoder-decoder, the per-layer state service, step-mode generation and
beam search. Tasks import from here only."""

from fwp.model.adaptive import AdaptiveInput, AdaptiveLogSoftmax
from fwp.model.beam_search import beam_search, greedy_decode
from fwp.model.block import FeedForward, TransformerBlock
from fwp.model.compilation import compile_blocks
from fwp.model.config import BackboneConfig, BlockConfig, DecoderLMConfig, EncoderDecoderConfig
from fwp.model.decoder_lm import DecoderLM
from fwp.model.encoder_decoder import EncoderDecoder
from fwp.model.generation import (
    check_generation_fits,
    check_sampling_options,
    choose_tokens,
    sample,
    step_log_probs,
)
from fwp.model.positions import LearnedPositions, NoPositions, SinusoidalPositions, positional_encoding
from fwp.model.stack import InputEncoding, TransformerStack
from fwp.model.states import (
    CrossBlockState,
    detach_states,
    export_fast_weights,
    fast_weight_norm,
    import_fast_weights,
    reorder_states,
    saved_state_shape,
)

__all__ = [
    "AdaptiveInput",
    "AdaptiveLogSoftmax",
    "BackboneConfig",
    "BlockConfig",
    "CrossBlockState",
    "DecoderLM",
    "DecoderLMConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "FeedForward",
    "InputEncoding",
    "LearnedPositions",
    "NoPositions",
    "SinusoidalPositions",
    "TransformerBlock",
    "TransformerStack",
    "beam_search",
    "check_generation_fits",
    "check_sampling_options",
    "choose_tokens",
    "compile_blocks",
    "detach_states",
    "export_fast_weights",
    "fast_weight_norm",
    "greedy_decode",
    "import_fast_weights",
    "positional_encoding",
    "reorder_states",
    "sample",
    "saved_state_shape",
    "step_log_probs",
]
