"""File helpers of the data pipeline: input checks, text lines, streamed content hashes, atomic writes,
cache root, and the errors a user's data can cause."""

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


class DataError(ValueError):
    """A fault of the user's data or data options (a file, a line, an option to fix), also when it is
    found during a run (``setup``, a dataloader): the command line reports it as one line."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file the options name does not exist."""


class StaleCacheWarning(UserWarning):
    """A derived file (tokenizer, token cache) did not match its fingerprint and is being rebuilt."""


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
    """``path`` itself; ``DataFileNotFoundError`` if it is missing, ``DataError`` if it has no bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"file is empty: {path}")
    return path


def undecodable_line(path: Path) -> DataError | None:
    """The error naming the first line of ``path`` that is not valid UTF-8 (1-based, lines ending at
    ``\\n`` as ``wc -l`` counts them), or None if every line is."""
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return DataError(
                    f"{path}: line {number} is not valid UTF-8 (byte {raw[error.start]:#04x} at byte "
                    f"{error.start + 1} of the line); data files must be UTF-8 text"
                )
    return None


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file without their ``\\n``. Only ``\\n`` ends a line (a ``\\r`` inside a
    line stays in it, a ``\\r\\n`` ending leaves a ``\\r`` that stripping removes), so line ``i`` is the
    ``i``-th line of ``wc -l`` and of the other side of a parallel corpus; a last line without ``\\n``
    counts too. Invalid UTF-8 raises ``DataError`` naming the file and the line."""
    try:
        with open(path, encoding="utf-8", newline="\n") as stream:
            for line in stream:
                yield line.removesuffix("\n")
    except UnicodeDecodeError as error:
        raise undecodable_line(path) or error from error


@lru_cache(maxsize=64)
def _sha256_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, read in blocks; remembered per (path, inode, size, modification
    time) in this process."""
    path = require_nonempty_file(path).resolve()
    status = path.stat()
    return _sha256_of_version(str(path), status.st_ino, status.st_size, status.st_mtime_ns)


def text_sha256(text: str) -> str:
    """SHA-256 hex digest of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def cache_writes(directory: Path) -> Iterator[None]:
    """Turn a failure to create files in ``directory`` (read-only, not a directory, no space) into a
    ``DataError`` naming it and the ``cache_dir`` option."""
    try:
        yield
    except OSError as error:
        raise DataError(
            f"cannot write derived files (tokenizer, token caches) in {directory}: "
            f"{error.strerror or error}; set the data option cache_dir to a writable directory"
        ) from error


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
