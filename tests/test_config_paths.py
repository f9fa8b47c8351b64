"""Every ``conf/….yaml`` path the documentation or a config comment names exists.

Scanned: README.md, BENCHMARKS.md, docs/*.md, conf/README.md (when present) and every YAML file under
``conf/`` (whose comments show example commands). A path with a brace pattern
(``conf/mt/wmt14_{base,big}.yaml``) names each expansion; one with ``*`` must match at least one file;
placeholders (``conf/....yaml``, ``conf/…yaml``) are not paths."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = re.compile(r"conf/[\w./{},*…-]*?\.yaml")
BRACES = re.compile(r"\{([^{}]*)\}")


def documents() -> list[Path]:
    """The files whose ``conf/…yaml`` mentions are checked."""
    named = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "conf" / "README.md"]
    return (
        [path for path in named if path.exists()]
        + sorted((REPO / "docs").glob("*.md"))
        + sorted((REPO / "conf").rglob("*.yaml"))
    )


def expand_braces(pattern: str) -> list[str]:
    """``a{b,c}d{e,f}`` → ``[abde, abdf, acde, acdf]`` (shell brace expansion, not nested)."""
    pieces = BRACES.split(pattern)
    literals, choices = pieces[0::2], [group.split(",") for group in pieces[1::2]]
    return [
        "".join(part for pair in itertools.zip_longest(literals, combination, fillvalue="") for part in pair)
        for combination in itertools.product(*choices)
    ]


def named_config_paths() -> list[tuple[str, str]]:
    """``(where, path)`` of every config path named, braces expanded, placeholders left out."""
    found = []
    for document in documents():
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            for match in CONFIG_PATH.finditer(line):
                if "..." in match.group() or "…" in match.group():
                    continue
                for path in expand_braces(match.group()):
                    found.append((f"{document.relative_to(REPO)}:{number}", path))
    return found


def test_brace_expansion():
    assert expand_braces("conf/mt/wmt14_{base,big}.yaml") == [
        "conf/mt/wmt14_base.yaml",
        "conf/mt/wmt14_big.yaml",
    ]
    assert expand_braces("conf/{a,b}/{c,d}.yaml") == [
        "conf/a/c.yaml",
        "conf/a/d.yaml",
        "conf/b/c.yaml",
        "conf/b/d.yaml",
    ]


def test_documents_name_config_paths():
    """The scan finds the paths it should (a broken pattern would make the check below vacuous)."""
    paths = {path for _, path in named_config_paths()}
    assert {"conf/retrieval/setting1.yaml", "conf/trainer/bf16.yaml"} <= paths


@pytest.mark.parametrize(("where", "path"), named_config_paths(), ids=lambda value: value)
def test_named_config_path_exists(where, path):
    matches = list(REPO.glob(path)) if "*" in path else [REPO / path]
    assert matches and all(match.is_file() for match in matches), (
        f"{where} names {path}, which does not exist"
    )
