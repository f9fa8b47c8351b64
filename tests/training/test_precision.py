"""bf16-mixed training on CPU (the delta-rule language model, fast weights carried across segments)
tracks float32: every step's loss within ``STEP_BOUND`` nats, the last ten steps' mean within
``MEAN_BOUND`` (relative). Measured (30 steps of 4 x 16 tokens, loss 7.4 → 5.0): worst step 4.4e-3
nats, last-ten mean 5e-6 relative; the bounds leave a wide margin and still fail a run that diverges
or stops learning. The run is checked to really compute its linear layers in bfloat16."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from cli_runs import LossRecorder, build, fit, lm_args

from tasks.language_modeling.synthetic import write_synthetic_corpus

STEPS = 30
STEP_BOUND = 0.02
MEAN_BOUND = 0.005


class LinearOutputTypes(L.Callback):
    """The dtypes of every ``nn.Linear`` output during training."""

    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda _module, _inputs, output: self.seen.add(output.dtype))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(
        tmp_path_factory.mktemp("corpus"), train_lines=300, valid_lines=5, test_lines=1
    )


def train(corpus, precision: str) -> tuple[dict[int, float], set[torch.dtype]]:
    recorder, types = LossRecorder(), LinearOutputTypes()
    args = lm_args(
        "lm_synthetic_delta",
        corpus,
        "--trainer.max_steps",
        str(STEPS),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.precision",
        precision,
    )
    fit(build(args, recorder, types))
    return recorder.losses, types.seen


def test_bf16_mixed_tracks_float32(corpus):
    full, full_types = train(corpus, "32-true")
    mixed, mixed_types = train(corpus, "bf16-mixed")
    assert (full_types, mixed_types) == ({torch.float32}, {torch.bfloat16})
    assert sorted(full) == sorted(mixed) == list(range(1, STEPS + 1))
    assert full[STEPS] < full[1] - 1.0, "float32 run did not learn"
    assert full != mixed
    for step in full:
        assert abs(mixed[step] - full[step]) <= STEP_BOUND, (step, full[step], mixed[step])
    last = range(STEPS - 9, STEPS + 1)
    full_mean, mixed_mean = (sum(losses[s] for s in last) / 10 for losses in (full, mixed))
    assert abs(mixed_mean - full_mean) <= MEAN_BOUND * full_mean
