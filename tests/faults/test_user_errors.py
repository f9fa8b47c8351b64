"""Every fault a user can cause ends in one line ``fwp: error: …`` naming the file, line or option,
with status 2 and no traceback (one table: the cases live beside this file, one module per area)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.faults.cli_run import Fault, error_line, run_cli

AREAS = {
    module.stem: importlib.import_module(f"tests.faults.{module.stem}").CASES
    for module in sorted(Path(__file__).parent.glob("cases_*.py"))
}
CASES: list[Fault] = [case for cases in AREAS.values() for case in cases]


def test_every_area_has_cases_with_distinct_ids():
    """A case module that lost its cases (or an area that was never written) would pass silently."""
    assert set(AREAS) >= {"cases_cli", "cases_data", "cases_run", "cases_model"}
    assert all(AREAS.values()), {name: len(cases) for name, cases in AREAS.items()}
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(ids)


@pytest.mark.parametrize("fault", CASES, ids=lambda fault: fault.id)
def test_fault_ends_in_one_named_error_line(fault: Fault, tmp_path):
    prepared = fault.prepare(tmp_path)
    args, stdin = prepared if isinstance(prepared, tuple) else (prepared, None)
    line = error_line(run_cli(args, cwd=tmp_path, stdin=stdin))
    for name in fault.names(tmp_path):
        assert str(name) in line, f"{name!r} not named in: {line}"
    for path in fault.expect_no_files(tmp_path):
        assert not path.exists(), f"the failed run left {path} behind"
