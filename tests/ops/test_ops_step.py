"""The ``step`` backend (``auto``'s choice for one token, the decoding step) equals the reference
recurrence in float64: outputs, final state and the gradients of every leaf (raw q, k, v, β, W_0, z_0),
for every feature map, normalisation and rule, one token and several, fresh and carried."""

from __future__ import annotations

import pytest
from ops_cases import (
    FEATURE_MAPS,
    NORMALISATIONS,
    RULES,
    assert_all_close,
    make_problem,
    outputs_and_gradients,
)


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("rule", RULES)
def test_step_backend_equals_the_reference(rule: str, feature_map: str, normalisation: str, T: int) -> None:
    problem = make_problem(rule=rule, feature_map=feature_map, normalisation=normalisation, T=T, seed=T)
    expected = outputs_and_gradients(problem, backend="reference")
    for backend in ("step", "auto"):
        assert_all_close(outputs_and_gradients(problem, backend=backend), expected, rel=1e-12)
