"""Where the text results of ``test`` and ``predict`` go (see ``docs/outputs.md``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path


def write_lines(lines: Iterable[str], path: str | Path | None) -> None:
    """Each of ``lines`` followed by ``\\n``, to ``path`` (UTF-8, created with its parent directories,
    replaced if it exists) or, for None, to stdout (flushed)."""
    text = "".join(f"{line}\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
