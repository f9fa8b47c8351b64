"""Average the model weights of the last K Lightning checkpoints (Vaswani et al. 2017; fairseq's
``average_checkpoints.py``).

``python -m tasks.translation.average_checkpoints --inputs DIR_OR_FILES... --num K --output out.ckpt``

The inputs (``*.ckpt`` files, or directories whose ``*.ckpt`` files are taken) are ordered by the
``global_step`` stored in each checkpoint, copies of the same step (``last.ckpt``) counted once, and
the ``K`` newest are averaged: every floating-point tensor of ``state_dict`` becomes the mean over the
K checkpoints (accumulated in float64, stored in its own dtype). Everything else comes from the newest
checkpoint: non-floating tensors, the optimiser and loop states, hyper-parameters, and the tensors
whose key matches a ``--keep-newest`` pattern (by default FAVOR+'s random projections ``omega``,
which are drawn, not learned: a mean of several draws is no projection of the right distribution).
The output loads like any checkpoint of the run (``--ckpt_path`` of ``test``/``predict``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_KEEP_NEWEST = (r"(^|\.)omega$",)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, memory-mapped on CPU (tensors are read when used). Checkpoints hold
    pickled hyper-parameters, so only load files you trust, as with ``--ckpt_path``."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def checkpoint_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The ``.ckpt`` files named by ``inputs``: files as given, directories expanded to their
    ``*.ckpt`` files."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.ckpt"))
            if not found:
                raise FileNotFoundError(f"no *.ckpt file in directory {item}")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"checkpoint input {item} is neither a file nor a directory")
    return files


def newest_checkpoints(inputs: Sequence[str | Path], num: int) -> list[tuple[Path, dict[str, Any]]]:
    """The ``num`` checkpoints with the highest distinct ``global_step`` among ``inputs``, newest first."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got num={num}")
    by_step: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path in checkpoint_files(inputs):
        checkpoint = load_checkpoint(path)
        step = int(checkpoint.get("global_step", -1))
        by_step.setdefault(step, (path, checkpoint))
    if len(by_step) < num:
        raise ValueError(f"asked to average num={num} checkpoints, found {len(by_step)} distinct steps")
    return [by_step[step] for step in sorted(by_step, reverse=True)[:num]]


def average_state_dicts(
    state_dicts: Sequence[dict[str, torch.Tensor]], *, keep_newest: Sequence[str] = DEFAULT_KEEP_NEWEST
) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating-point tensors of ``state_dicts`` (the first is the newest and
    supplies non-floating tensors and the keys matching a ``keep_newest`` regular expression)."""
    if not state_dicts:
        raise ValueError("no state_dict to average")
    newest = state_dicts[0]
    for other in state_dicts[1:]:
        if other.keys() != newest.keys():
            difference = sorted(set(other) ^ set(newest))
            raise ValueError(f"checkpoints hold different tensors; keys not in all: {difference[:5]}")
    patterns = [re.compile(pattern) for pattern in keep_newest]
    averaged = {}
    for key, tensor in newest.items():
        if not tensor.is_floating_point() or any(pattern.search(key) for pattern in patterns):
            averaged[key] = tensor.clone()
            continue
        total = torch.zeros(tensor.shape, dtype=torch.float64)
        for state_dict in state_dicts:
            if state_dict[key].shape != tensor.shape:
                raise ValueError(
                    f"{key}: shapes differ, {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
                )
            total += state_dict[key].to(torch.float64)
        averaged[key] = (total / len(state_dicts)).to(tensor.dtype)
    return averaged


def average_checkpoints(
    inputs: Sequence[str | Path],
    num: int,
    output: str | Path,
    *,
    keep_newest: Sequence[str] = DEFAULT_KEEP_NEWEST,
) -> list[Path]:
    """Write to ``output`` the newest of the ``num`` newest checkpoints of ``inputs`` with its
    ``state_dict`` replaced by the average over the ``num``; returns the averaged files, newest first."""
    chosen = newest_checkpoints(inputs, num)
    result = dict(chosen[0][1])
    result["state_dict"] = average_state_dicts(
        [checkpoint["state_dict"] for _, checkpoint in chosen], keep_newest=keep_newest
    )
    result["averaged_checkpoints"] = [str(path) for path, _ in chosen]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, output)
    return [path for path, _ in chosen]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.translation.average_checkpoints",
        description="Average the model weights of the K newest Lightning checkpoints.",
    )
    parser.add_argument("--inputs", nargs="+", required=True, help="checkpoint files and/or directories")
    parser.add_argument("--num", type=int, required=True, help="how many of the newest checkpoints (K)")
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    parser.add_argument(
        "--keep-newest",
        nargs="*",
        default=list(DEFAULT_KEEP_NEWEST),
        help="regular expressions of state_dict keys copied from the newest checkpoint, not averaged "
        "(default: FAVOR+ random projections)",
    )
    args = parser.parse_args(argv)
    try:
        averaged = average_checkpoints(args.inputs, args.num, args.output, keep_newest=args.keep_newest)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(f"averaged {len(averaged)} checkpoints into {args.output}:")
    for path in averaged:
        print(f"  {path}")


if __name__ == "__main__":
    main()
