"""The one error type for user mistakes.

A :class:`TbxError` is printed by the CLI as a single line ``error: WHAT [WHERE] — FIX`` and exits
with code 2 (no traceback unless ``--debug``).  Library code raises it for anything the user can
fix: bad input files, bad options, missing weights.  Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

from pathlib import Path


class TbxError(Exception):
    """A user-facing error: *what* went wrong, *where* (file[:line]) and *how to fix* it."""

    exit_code = 2

    def __init__(self, what: str, where: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.where = str(where) if where is not None else None
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        msg = self.what
        if self.where:
            msg += f" [{self.where}]"
        if self.fix:
            msg += f" — {self.fix}"
        return msg.replace("\n", " ")


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``path`` or ``path:line`` (1-based line)."""
    return f"{path}:{line}" if line is not None else str(path)
