"""``python cli.py``, ``python -m fwp`` and the installed ``fwp`` script are one CLI: same help, and a
user error ends with status 2 through each (a console script that passed ``main``'s return value to
``sys.exit`` would exit 1 after every successful run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {
    "cli.py": [sys.executable, str(REPO / "cli.py")],
    "python -m fwp": [sys.executable, "-m", "fwp"],
    "fwp": [shutil.which("fwp") or "fwp-script-not-installed"],
}


def run(command: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_the_subcommands(name):
    result = run(ENTRY_POINTS[name], "--help")
    assert result.returncode == 0, result.stderr
    assert "{fit,validate,test,predict}" in result.stdout


@pytest.mark.parametrize("name", ["python -m fwp", "fwp"])
def test_a_user_error_exits_with_status_2(name):
    result = run(
        ENTRY_POINTS[name],
        "fit",
        "--config",
        "conf/retrieval/setting1.yaml",
        "--model.init_args.attention",
        "no_such_attention",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "fwp: error:" in result.stderr and "no_such_attention" in result.stderr
