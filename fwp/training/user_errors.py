"""User faults end in one line: ``fwp: error: <Type>: <message>`` on stderr and exit status 2
(``FWP_DEBUG=1`` keeps the full trace); the helpers that dig the reason out of jsonargparse's wrapping
and recognise an allocation failure."""

from __future__ import annotations

import os
import re
import sys

USER_ERRORS = (ValueError, FileNotFoundError, TypeError)
UNION_MISMATCH = "Does not validate against any of the Union subtypes"


def reason_in_union(error: BaseException) -> BaseException:
    """The error a class raised when jsonargparse built it as one type of a union (a backbone config
    typed ``DecoderLMConfig | None``, inside the model's ``LightningModule | None``), where jsonargparse
    reports it within "Does not validate against any of the Union subtypes" and every value tried;
    any other error itself."""
    reason = error
    while str(reason).startswith(UNION_MISMATCH) and isinstance(reason.__cause__, USER_ERRORS):
        reason = reason.__cause__
    return reason


def one_line(message: str) -> str:
    """``message`` with its lines joined by ``"; "`` (by a space after a line ending in ``:``; blank
    lines and indentation dropped)."""
    joined = ""
    for line in (line.strip() for line in message.splitlines() if line.strip()):
        joined += ("" if not joined else " " if joined.endswith(":") else "; ") + line
    return joined


def exit_with_user_error(error: BaseException) -> None:
    """End with the error's message on one line of stderr and status 2 (``FWP_DEBUG=1``: re-raise,
    full trace)."""
    if os.environ.get("FWP_DEBUG") == "1":
        raise error
    print(f"fwp: error: {type(error).__name__}: {one_line(str(error))}", file=sys.stderr)
    raise SystemExit(2) from error


def failed_allocation(error: BaseException) -> str | None:
    """If ``error`` or an exception it was raised from is an allocation failure (torch's "can't
    allocate memory" or "out of memory", even when jsonargparse has reworded it into a type error):
    the size asked for (``"64.0 TB"``, or ``"too much"`` when not stated); else None."""
    messages = []
    while error is not None and len(messages) < 10:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    text = " ".join(messages)
    if not re.search(r"can't allocate memory|out of memory", text, re.IGNORECASE):
        return None
    size = re.search(r"tried to allocate (\d+) bytes", text)
    return readable_bytes(int(size.group(1))) if size else "too much"


def readable_bytes(count: int) -> str:
    """``64000000000064`` → ``"64.0 TB"`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1000
    return f"{count:.1f} TB"
