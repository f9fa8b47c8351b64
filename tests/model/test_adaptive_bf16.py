"""The adaptive softmax runs in float32 under bf16 autocast (the WikiText-103 configs with bf16-mixed)."""

import torch

from fwp.model import DecoderLM


def test_adaptive_softmax_log_probs_under_bf16_autocast_match_float32():
    torch.manual_seed(0)
    vocab = 60
    model = DecoderLM(
        vocab, d_model=16, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=[10, 30], dropout=0.0
    )
    model.eval()
    tokens = torch.randint(vocab, (2, 7))
    targets = torch.randint(vocab, (2, 7))
    reference = model.target_log_probs(model(tokens)[0], targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.target_log_probs(model(tokens)[0], targets)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed, reference, atol=0.1, rtol=0.05)
