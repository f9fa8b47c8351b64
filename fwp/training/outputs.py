"""Where the text results of ``test`` and ``predict`` go (see ``docs/outputs.md``)."""

from __future__ import annotations

import os
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


def check_output_file(option: str, path: str | Path | None) -> None:
    """A ``ValueError`` naming ``option`` if ``path`` (None: stdout, always fine) cannot become a file:
    it is a directory, or its nearest existing ancestor is a file or not writable. Checked when the
    option is given, not after a long decoding run."""
    if path is None:
        return
    output = Path(path)
    if output.is_dir():
        raise ValueError(f"{option} {output} is a directory: give a file name")
    ancestor = next(parent for parent in output.absolute().parents if parent.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {output}: cannot create it under {ancestor}")


def new_file(path: Path) -> Path:
    """``path`` if no file has that name, else the first free ``<stem>-v1<suffix>``, ``-v2`` … (a run
    writes its results beside its logs without replacing a file already there)."""
    candidate, version = path, 0
    while candidate.exists():
        version += 1
        candidate = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    return candidate
