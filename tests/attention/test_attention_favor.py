"""FAVOR+ Ω: redrawn only at the start of a sequence, per the redraw policy; saved with checkpoints."""

from __future__ import annotations

import pytest
import torch
from attention_cases import build_mha, sequence

from fwp.attention import FastWeightAttention, MultiHeadAttention
from fwp.ops import favor, orthogonal_random_projection, transposed_orthogonal_projection


def omega_after_new_sequence(mha: MultiHeadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Ω before and after a forward call that starts a sequence."""
    before = mha.core.phi.omega.clone()
    mha(sequence())
    return before, mha.core.phi.omega.clone()


@pytest.mark.parametrize(
    ("redraw", "changes_in_training", "changes_in_eval"),
    [("always", True, True), ("train", True, False), ("never", False, False)],
)
def test_redraw_policy_at_the_start_of_a_sequence(
    redraw: str, changes_in_training: bool, changes_in_eval: bool
):
    mha = build_mha({"name": "performer", "redraw": redraw, "backend": "reference"})
    for training, expected in ((True, changes_in_training), (False, changes_in_eval)):
        mha.train(training)
        before, after = omega_after_new_sequence(mha)
        assert (not torch.equal(before, after)) == expected, (training, redraw)


def test_no_redraw_within_a_carried_state_or_a_read() -> None:
    mha = build_mha({"name": "performer", "redraw": "always", "backend": "reference"}).train()
    x = sequence(length=6)
    _, state = mha(x[:, :3])
    omega = mha.core.phi.omega.clone()
    mha(x[:, 3:], state=state)
    assert torch.equal(mha.core.phi.omega, omega)
    mha.core.read(torch.randn(2, 2, 3, 8, dtype=torch.float64), state)
    assert torch.equal(mha.core.phi.omega, omega)


def test_cross_attention_reads_with_the_omega_it_wrote_with() -> None:
    mha = build_mha({"name": "performer", "redraw": "always"}, cross=True)
    memory, x = sequence(length=5), sequence(length=3)
    parallel, state = mha(x, memory=memory)
    steps = [mha(x[:, t : t + 1], state=state)[0] for t in range(3)]
    torch.testing.assert_close(torch.cat(steps, dim=1), parallel, rtol=1e-10, atol=1e-12)


def test_omega_is_saved_so_a_checkpoint_reproduces_evaluation() -> None:
    spec = {"name": "performer", "backend": "reference"}
    trained = build_mha(spec).train()
    trained(sequence())
    restored = build_mha(spec)
    assert "core.phi.omega" in trained.state_dict()
    restored.load_state_dict(trained.state_dict())
    trained.eval()
    x = sequence()
    torch.testing.assert_close(restored(x)[0], trained(x)[0], rtol=0, atol=0)


def test_a_checkpoint_with_omega_in_the_old_place_loads_and_gives_the_same_outputs() -> None:
    """Before the feature maps became modules of ``fwp.ops``, Ω was the core's own buffer, saved as
    ``core.omega``; such a checkpoint (here: a state dict in that layout, loaded strictly into a model
    that nests the core) must load into ``core.phi.omega`` and reproduce the outputs exactly."""
    spec = {"name": "performer", "backend": "reference"}
    trained = build_mha(spec).train()
    trained(sequence())
    old_layout = {
        key.replace("core.phi.omega", "core.omega"): value for key, value in trained.state_dict().items()
    }
    assert "core.omega" in old_layout and "core.phi.omega" not in old_layout
    model, restored = (
        torch.nn.ModuleDict({"attention": trained}),
        torch.nn.ModuleDict({"attention": build_mha(spec)}),
    )
    restored.load_state_dict({f"attention.{key}": value for key, value in old_layout.items()})
    model.eval(), restored.eval()
    x = sequence()
    torch.testing.assert_close(restored["attention"](x)[0], model["attention"](x)[0], rtol=0, atol=0)


def test_feature_eps_is_added_before_the_scaling() -> None:
    """As the official LM code's ``prime`` (kernel_eps 1e-4): ``(features + ε)/√(2m)``; adding it after
    the scaling made it √(2m) = 5.7 times larger at m = 16."""
    x, omega = torch.randn(3, 8, dtype=torch.float64), torch.randn(16, 8, dtype=torch.float64)
    u = x @ omega.T
    half_norm = (x * x).sum(-1, keepdim=True) / 2
    features = torch.cat([torch.exp(u - half_norm), torch.exp(-u - half_norm)], dim=-1)
    torch.testing.assert_close(favor(x, omega, 1e-4), (features + 1e-4) / 32**0.5, rtol=1e-12, atol=0)


def orthogonal_within_blocks(rows: torch.Tensor, block: int, tolerance: float = 1e-10) -> bool:
    """Whether the rows of ``rows`` are orthogonal within each run of ``block`` consecutive rows."""
    return all(
        (gram := chunk @ chunk.T).sub(torch.diag(gram.diagonal())).abs().max() < tolerance
        for chunk in rows.split(block)
    )


@pytest.mark.parametrize(("m", "d"), [(16, 16), (16, 32), (64, 16)])
def test_the_two_omega_draws(m: int, d: int) -> None:
    """``orthogonal``: Ω's rows (feature directions) orthogonal within blocks of d; ``transposed`` (the
    official LM code's ``draw_orthogonal_random_matrix(d_head, m)`` used as ``x @ P``): Ω = Pᵀ with the
    rows of P, i.e. the columns of Ω, orthogonal within blocks of m."""
    g = torch.Generator().manual_seed(0)
    omega = orthogonal_random_projection(m, d, generator=g, dtype=torch.float64)
    official = transposed_orthogonal_projection(m, d, generator=g, dtype=torch.float64)
    assert omega.shape == official.shape == (m, d)
    assert orthogonal_within_blocks(omega, d) and orthogonal_within_blocks(official.T, m)
    assert not orthogonal_within_blocks(official, d)
    core = FastWeightAttention(d, feature_map="favor", m=m, omega_draw="transposed")
    before = core.phi.omega.clone()
    core.phi.redraw_projection()
    assert not torch.equal(before, core.phi.omega) and orthogonal_within_blocks(core.phi.omega.T, m, 1e-4)
