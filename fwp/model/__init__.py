"""The backbone shared by all tasks: Transformer blocks, a decoder-only language model, an
encoder-decoder, state utilities and step-mode generation."""

from fwp.model.adaptive import AdaptiveInput, AdaptiveLogSoftmax
from fwp.model.block import FeedForward, TransformerBlock
from fwp.model.decoder_lm import DecoderLM
from fwp.model.encoder_decoder import EncoderDecoder
from fwp.model.generation import choose_tokens, sample, step_log_probs
from fwp.model.positions import LearnedPositions, NoPositions, SinusoidalPositions, positional_encoding
from fwp.model.stack import InputEncoding, TransformerStack
from fwp.model.states import CrossBlockState, detach_states, reorder_states

__all__ = [
    "AdaptiveInput",
    "AdaptiveLogSoftmax",
    "CrossBlockState",
    "DecoderLM",
    "EncoderDecoder",
    "FeedForward",
    "InputEncoding",
    "LearnedPositions",
    "NoPositions",
    "SinusoidalPositions",
    "TransformerBlock",
    "TransformerStack",
    "choose_tokens",
    "detach_states",
    "positional_encoding",
    "reorder_states",
    "sample",
    "step_log_probs",
]
