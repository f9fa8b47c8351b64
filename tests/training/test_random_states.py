"""Capturing and restoring every random number generator (``fwp.training.checkpointing``): torch's
CPU generator, numpy's and python's global generators, and the CUDA generators when there are any.

Nothing in the project draws from numpy or python ``random`` during training, so the end-to-end resume
tests cannot see whether those states come back; these tests draw from each generator themselves.
"""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fwp.training.checkpointing import RandomStateCheckpoint, capture_random_states, restore_random_states


def draw_from_every_generator() -> dict[str, list[float]]:
    """A few numbers from each global generator (``random.gauss`` also leaves python's cached
    Gaussian, ``np.random.normal`` numpy's, both part of the states)."""
    draws = {
        "torch": torch.rand(3).tolist(),
        "numpy": [*np.random.rand(3).tolist(), float(np.random.normal())],
        "python": [random.random(), random.gauss(0.0, 1.0)],
    }
    if torch.cuda.is_available():
        draws["cuda"] = torch.rand(3, device="cuda").tolist()
    return draws


def through_a_checkpoint_file(states: dict) -> dict:
    """``states`` saved and loaded as a checkpoint is (``torch.load(weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save(states, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_restored_states_repeat_every_generators_draws() -> None:
    """Catches a generator left out of the capture or the restore (e.g. numpy's or python's states not
    put back on resume): each generator's draws after the restore must repeat those after the capture,
    which they do not without the restore."""
    draw_from_every_generator()  # leave python's and numpy's cached Gaussians in the state
    states = through_a_checkpoint_file(capture_random_states())
    expected = draw_from_every_generator()
    assert draw_from_every_generator() != expected  # the generators moved on
    restore_random_states(states)
    assert draw_from_every_generator() == expected


def test_a_resumed_callback_restores_the_saved_states_at_the_first_training_batch() -> None:
    """``RandomStateCheckpoint``: the states in a checkpoint come back when the resumed run starts its
    first training batch, not before (its data loader may draw first), and only once."""
    saved = through_a_checkpoint_file(RandomStateCheckpoint().state_dict())
    expected = draw_from_every_generator()
    resumed = RandomStateCheckpoint()
    resumed.load_state_dict(saved)
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert draw_from_every_generator() != expected  # nothing restored before the first batch
    resumed.on_train_batch_start(trainer, None, batch=None, batch_idx=0)
    assert draw_from_every_generator() == expected
    resumed.on_train_batch_start(trainer, None, batch=None, batch_idx=1)
    assert draw_from_every_generator() != expected  # the second batch restores nothing


class FakeCuda:
    """CUDA generators without a GPU: ``get_rng_state_all``/``set_rng_state_all`` on one state per
    device, held here."""

    def __init__(self) -> None:
        self.states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [state.clone() for state in self.states]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        self.states = [state.clone() for state in states]


def test_cuda_generators_are_captured_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine every device's CUDA generator state is saved and put back (faked here when
    there is no GPU; with one, the first test draws on CUDA too)."""
    cuda = FakeCuda()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", cuda.get_rng_state_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", cuda.set_rng_state_all)
    states = through_a_checkpoint_file(capture_random_states())
    saved = cuda.get_rng_state_all()
    cuda.states = [torch.zeros(3, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8)]
    restore_random_states(states)
    assert [state.tolist() for state in cuda.states] == [state.tolist() for state in saved]
