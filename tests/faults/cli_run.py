"""Run ``cli.py`` as a user would (a fresh process) and check the user-error contract:
status 2, exactly one ``fwp: error: …`` line on stderr naming what the user has to fix, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "cli.py"


@dataclass(frozen=True)
class Fault:
    """One user-caused fault: ``prepare(tmp_path)`` builds whatever files the case needs and returns
    the CLI arguments (and optionally standard input); ``names`` must all appear in the error line
    (the file, line or option the user has to look at)."""

    id: str
    prepare: Callable[[Path], list[str] | tuple[list[str], str]]
    names: Callable[[Path], list[str]] = field(default=lambda tmp_path: [])
    expect_no_files: Callable[[Path], list[Path]] = field(default=lambda tmp_path: [])


def run_cli(
    args: list[str], cwd: Path, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in ``cwd`` with one thread and no debug traces."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("FWP_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=cwd,
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``fwp: error:`` line of a run that must have failed as a user error."""
    output = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 2, f"status {result.returncode}, wanted 2\n{output}"
    assert "Traceback" not in result.stderr, f"a traceback reached the user\n{output}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("fwp: error:")]
    assert len(lines) == 1, f"wanted exactly one 'fwp: error:' line, got {len(lines)}\n{output}"
    return lines[0]
