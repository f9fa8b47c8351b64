"""The WMT14 configs give the tokens per optimiser step of fairseq's Transformer-big recipe."""

from __future__ import annotations

from tests.experiments import experiment_config

# fairseq examples/scaling_nmt: transformer_vaswani_wmt_en_de_big, --max-tokens 3584 on 8 GPUs, no
# --update-freq: 8 × 3584 tokens per update, counted B × max(S, T) as our max_tokens now is.
FAIRSEQ_GPUS, FAIRSEQ_MAX_TOKENS, FAIRSEQ_UPDATE_FREQ = 8, 3584, 1


def test_wmt14_tokens_per_optimiser_step_equal_the_fairseq_recipe_on_one_device():
    for name in ("wmt14_base_delta", "wmt14_big_delta", "wmt14_big_softmax"):
        config = experiment_config(name)
        data, trainer = config["data"]["init_args"], config["trainer"]
        one_device = 1 * trainer["accumulate_grad_batches"] * data["max_tokens"]
        assert one_device == FAIRSEQ_GPUS * FAIRSEQ_UPDATE_FREQ * FAIRSEQ_MAX_TOKENS
