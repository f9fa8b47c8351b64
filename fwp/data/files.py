"""File helpers of the data pipeline: input checks, streamed content hashes, atomic writes, cache root."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

HASH_BLOCK_BYTES = 1 << 22


def default_cache_root() -> Path:
    """``$FWP_CACHE`` if set, else ``~/.cache/fwp``: where generated corpora go when no data is given."""
    return Path(os.environ.get("FWP_CACHE", Path.home() / ".cache" / "fwp")).expanduser()


def corpus_directories(
    data_dir: str | None,
    cache_dir: str | None,
    *,
    synthetic_subdir: str,
    expected_files: Sequence[str],
    generate: Callable[[Path], object],
) -> tuple[Path, Path]:
    """``(corpus directory, directory for derived files)`` of a task's data.

    With ``data_dir``: the corpus is there, derived files (tokenizers, token caches) go to ``cache_dir``
    or else beside the data. Without: the synthetic corpus lives in ``<cache_dir or cache root>/
    <synthetic_subdir>``, written by ``generate(directory)`` unless all ``expected_files`` are already
    there, and derived files go beside it.
    """
    if data_dir is not None:
        corpus = Path(data_dir).expanduser()
        return corpus, Path(cache_dir).expanduser() if cache_dir is not None else corpus
    corpus = Path(cache_dir or default_cache_root()).expanduser() / synthetic_subdir
    if not all((corpus / name).is_file() for name in expected_files):
        generate(corpus)
    return corpus, corpus


def require_nonempty_file(path: Path) -> Path:
    """``path`` itself; ``FileNotFoundError`` if it is missing, ``ValueError`` if it has no bytes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"file is empty: {path}")
    return path


@lru_cache(maxsize=64)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, read in blocks; remembered per (path, size, mtime) in this process."""
    path = require_nonempty_file(path).resolve()
    status = path.stat()
    return _sha256_of_version(str(path), status.st_size, status.st_mtime_ns)


def text_sha256(text: str) -> str:
    """SHA-256 hex digest of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success rename it onto ``path`` (atomic on one
    file system), on failure delete it. Concurrent writers of the same content (DDP ranks, also on other
    nodes of a shared file system, where process ids can coincide) are safe: each has its own file
    (``mkstemp``) and the last rename wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would make the cache private to its writer
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_lines_atomic(path: Path, lines: Iterator[str] | list[str]) -> None:
    """Write ``lines`` (each without its newline) to ``path`` atomically, one per line, UTF-8."""
    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8", newline="\n") as stream:
        for line in lines:
            stream.write(line + "\n")
