"""The experiments documented in ``conf/README.md``, for the tests that parse or build them.

Every table row of ``conf/README.md`` whose first cell is a backticked name and whose last cell is a
backticked ``python cli.py fit …`` command is one experiment: ``documented_experiments()`` maps the name
(e.g. ``wt103_small_linear``) to the command's arguments after ``fit``. The sweep commands' ``--configs``
compositions are read the same way (``documented_sweep_compositions``). Tests take configs from here, so
the documentation and the tests cannot drift.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONF_README = REPO / "conf" / "README.md"
ROW = re.compile(r"^\|\s*`(?P<name>\w+)`\s*\|(.*\|)?\s*`python cli\.py fit (?P<arguments>[^`]+)`\s*\|\s*$")
SWEEP = "python -m tasks.retrieval.sweep"


@functools.cache
def documented_experiments() -> dict[str, tuple[str, ...]]:
    """``{name: arguments after fit}`` of every experiment row of ``conf/README.md``; a name listed
    twice is an error."""
    experiments: dict[str, tuple[str, ...]] = {}
    for line in CONF_README.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            name = match.group("name")
            assert name not in experiments, f"conf/README.md lists {name} twice"
            arguments = tuple(shlex.split(match.group("arguments")))
            experiments[name] = tuple(str(REPO / a) if a.startswith("conf/") else a for a in arguments)
    return experiments


def beyond_the_paper() -> set[str]:
    """The experiments whose row of ``conf/README.md`` says "beyond the paper" (systems the paper did not
    run, e.g. ``setting1_deltanet``): no official counterpart or paper setting to hold them to."""
    lines = CONF_README.read_text(encoding="utf-8").splitlines()
    return {
        match.group("name") for line in lines if (match := ROW.match(line)) and "beyond the paper" in line
    }


def documented_sweep_compositions() -> list[str]:
    """The ``--configs`` compositions of every sweep command in ``conf/README.md`` (continuation lines
    joined), file paths made absolute."""
    text = CONF_README.read_text(encoding="utf-8").replace("\\\n", " ")
    compositions = []
    for line in text.splitlines():
        if line.strip().startswith(SWEEP):
            words = shlex.split(line.strip()[len(SWEEP) :])
            start = words.index("--configs") + 1
            end = next((i for i in range(start, len(words)) if words[i].startswith("--")), len(words))
            compositions += words[start:end]
    return [
        "+".join(str(REPO / p) if p.startswith("conf/") else p for p in c.split("+")) for c in compositions
    ]


@functools.cache
def _printed_config(arguments: tuple[str, ...]) -> str:
    from fwp.training.cli import main

    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        try:
            main(["fit", *arguments, "--print_config"])
        except SystemExit as exit_info:
            assert exit_info.code in (0, None), f"{' '.join(arguments)}: {errors.getvalue()}"
    return output.getvalue()


def parsed_config(arguments: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The full configuration ``fit`` resolves from ``arguments`` (``--print_config``: parsed and
    validated against the classes' signatures, nothing instantiated), without the ``config`` entry."""
    config = yaml.safe_load(_printed_config(tuple(arguments)))
    config.pop("config", None)
    return config


def experiment_config(name: str) -> dict[str, Any]:
    """The parsed configuration of the documented experiment ``name``."""
    return parsed_config(documented_experiments()[name])


def model_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """The model's init arguments of a parsed ``config`` with a ``backbone`` section resolved (its
    preset applied, ``BACKBONE_CONFIG`` of the model class) and its fields put beside the others, so
    that ``d_model``, ``attention``... read the same for every task."""
    from fwp.training.checkpoint_arguments import import_class

    arguments = dict(config["model"]["init_args"])
    config_class = getattr(import_class(config["model"]["class_path"]), "BACKBONE_CONFIG", None)
    if config_class is None:
        return arguments
    backbone = config_class.of(arguments.pop("backbone") or {})
    return arguments | {key: value for key, value in backbone.as_dict().items() if key != "preset"}


def experiment_arguments(name: str) -> list[str]:
    """The ``fit`` arguments of the documented experiment ``name`` (absolute config paths), to which a
    test appends its own overrides."""
    return list(documented_experiments()[name])
