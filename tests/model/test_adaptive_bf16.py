"""The adaptive softmax runs in float32 under bf16 autocast (the WikiText-103 configs with bf16-mixed)."""

import torch

from fwp.model import DecoderLM, DecoderLMConfig

# float32 vs float32 on the same inputs agree to ~1e-6; a softmax computed in bf16 is off by ~1e-2
TOLERANCE = 1e-4


def test_adaptive_softmax_log_probs_under_bf16_autocast_match_float32():
    """Same hidden states in, under autocast and without: equal to float32 rounding. The second half
    checks the tolerance catches a bf16 softmax (the test once allowed atol 0.1, which passed one)."""
    torch.manual_seed(0)
    vocab = 60
    model = DecoderLM(
        vocab,
        DecoderLMConfig(d_model=16, n_layers=1, n_heads=2, d_ff=24, adaptive_cutoffs=[10, 30], dropout=0.0),
    )
    model.eval()
    tokens = torch.randint(vocab, (2, 7))
    targets = torch.randint(vocab, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(tokens)[0]
        mixed = model.target_log_probs(hidden, targets)
        mixed_full = model.log_probs(hidden)
    reference = model.target_log_probs(hidden.float(), targets)
    assert mixed.dtype == mixed_full.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(mixed_full, model.log_probs(hidden.float()), atol=TOLERANCE, rtol=0)
    in_bf16 = model.adaptive_softmax.to(torch.bfloat16).target_log_prob(
        hidden.reshape(-1, 16).bfloat16(), targets.reshape(-1)
    )
    assert (in_bf16.float().view(targets.shape) - reference).abs().max() > TOLERANCE
