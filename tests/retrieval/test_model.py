"""The retrieval model: loss definition, every attention preset, and learning on a small S."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping

from fwp.attention import available_attentions
from tasks.retrieval.data import RetrievalDataModule
from tasks.retrieval.generator import make_batch
from tasks.retrieval.module import RetrievalModel, key_embedding_size, squared_error

CONF = Path(__file__).resolve().parents[2] / "conf" / "retrieval"


def test_key_embedding_size_follows_the_paper():
    assert key_embedding_size(20) == 44
    assert key_embedding_size(100) == 220


def test_squared_error_is_half_the_summed_squared_difference_averaged_over_valid_queries():
    output = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    target = torch.tensor([[0, 1]])
    assert squared_error(output, target, torch.tensor([[True, True]])).item() == pytest.approx(0.25 / 2)
    assert squared_error(output, target, torch.tensor([[False, True]])).item() == pytest.approx(0.25)


@pytest.mark.parametrize("attention", available_attentions())
def test_every_preset_retrieves_with_the_right_shapes_and_gradients(attention):
    """Every registered attention, the DeltaNet family included (tests/retrieval/test_family.py)."""
    model = RetrievalModel(num_keys=6, attention=attention, d_key=8)
    batch = make_batch(6, 2, 3, torch.Generator().manual_seed(0), all_queries=True)
    output, _ = model(batch.keys, batch.values, batch.queries)
    assert output.shape == (3, 6, 6)
    squared_error(output, batch.targets, batch.query_mask).backward()
    assert model.key_embedding.weight.grad.abs().sum() > 0


def test_delta_rule_learns_setting1_at_small_s():
    """A short run of the main job's preset must drive the evaluation loss far below its start."""
    L.seed_everything(0)
    model = RetrievalModel(num_keys=6, attention={"name": "delta", "nu": 2}, d_key=16, lr=3e-3)
    data = RetrievalDataModule(num_keys=6, setting=1, batch_size=32, train_batches=300)
    trainer = L.Trainer(
        max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=1, val_check_interval=300,
    )  # fmt: skip
    initial = trainer.validate(model, datamodule=data, verbose=False)[0]["valid/loss"]
    trainer.fit(model, datamodule=data)
    final = trainer.validate(model, datamodule=data, verbose=False)[0]["valid/loss"]
    assert final < initial / 5, (initial, final)


@pytest.mark.parametrize(
    ("attention", "bound_of"),
    [
        ("linear", lambda fan_in, d: 1 / math.sqrt(d)),
        ("delta", lambda fan_in, d: 1 / math.sqrt(d)),
        ("softmax", lambda fan_in, d: math.sqrt(6 / (fan_in + d))),
    ],
)
def test_key_and_query_projections_start_as_in_the_official_code(attention, bound_of):
    """W_k, W_q ~ U(±1/√d_k) (softmax: Xavier-uniform); with S = 40 PyTorch's default U(±1/√fan_in)
    has a smaller bound, which the previous code used."""
    torch.manual_seed(0)
    S, d = 40, 64
    model = RetrievalModel(num_keys=S, attention=attention, d_key=d)
    E = key_embedding_size(S)
    w_k = model.write_projection.weight[:d]
    for weight, fan_in in ((w_k, S + E), (model.query_projection.weight, E)):
        bound = bound_of(fan_in, d)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.98 * bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_query_weights_average_the_loss():
    output = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]])
    target = torch.tensor([[0, 1, 1]])
    weight = torch.tensor([[0.0, 0.25, 0.75]])
    expected = (0.25 * 0.25 + 0.75 * 0.5) / 1.0
    assert squared_error(output, target, weight).item() == pytest.approx(expected)


def test_trainer_stops_after_eleven_evaluations_without_improvement():
    """The official loop stops when its strike counter exceeds 10 (the YAML had patience 10)."""
    config = yaml.safe_load((CONF / "trainer.yaml").read_text())
    (stopping,) = [c for c in config["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    callback = EarlyStopping(**stopping["init_args"])
    evaluations = 0
    for loss in [0.5] + [0.5] * 30:
        evaluations += 1
        should_stop, _ = callback._evaluate_stopping_criteria(torch.tensor(loss))
        if should_stop:
            break
    assert evaluations - 1 == 11


@pytest.mark.parametrize(("attention", "logged"), [("delta", True), ("softmax", False)])
def test_training_logs_the_fast_weight_norm_of_a_fast_weight_memory(attention, logged, monkeypatch):
    """``train/fast_weight_norm`` is the mean over the batch of ``‖W‖_F`` (``fwp.model.fast_weight_norm``,
    the task no longer reads the state's layout); a softmax memory has none."""
    model = RetrievalModel(num_keys=6, attention=attention, d_key=8)
    batch = make_batch(6, 2, 3, torch.Generator().manual_seed(0), all_queries=True)
    values: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: values.setdefault(name, value))
    model.training_step(batch, 0)
    assert ("train/fast_weight_norm" in values) == logged
    if logged:
        _, state = model(batch.keys, batch.values, batch.queries)
        expected = state.W.flatten(1).norm(dim=1).mean()
        torch.testing.assert_close(values["train/fast_weight_norm"], expected.detach())
