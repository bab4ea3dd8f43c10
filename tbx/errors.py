"""The one error type for user mistakes, and the one place that turns any other failure the user
can fix into it (:func:`as_user_error`, used by the CLI's error boundary).

A :class:`TbxError` is printed by the CLI as a single line ``error: WHAT [WHERE] — FIX`` and exits
with code 2 (no traceback unless ``--debug``).  Library code raises it for anything the user can
fix: bad input files, bad options, missing weights.  Programming errors (``TypeError``,
``AttributeError``, …) stay ordinary exceptions with a traceback.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

MAX_LINE = 300
"""Longest error line the CLI prints (longer messages are shortened with '…')."""

_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process \d+")


def _clean(text: str) -> str:
    """One line without Python object reprs (``<_io.BytesIO object at 0x…>`` → ``the file``)."""
    text = _OBJECT_REPR.sub("the file", text)
    return " ".join(text.split())


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
        return _clean(msg)


class Interrupted(BaseException):
    """Raised by the CLI's SIGINT handler (a BaseException, so ``except Exception`` blocks let it
    pass and every ``finally`` removes its temporary files on the way out)."""

    exit_code = 130
    hint = "interrupted — rerun the same command to continue"


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``path`` or ``path:line`` (1-based line)."""
    return f"{path}:{line}" if line is not None else str(path)


_OS_FIX = {
    errno.EACCES: "check the permissions of the folder or file (or write somewhere else)",
    errno.EPERM: "check the permissions of the folder or file (or write somewhere else)",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENOSPC: "the disk is full: free space or write to another disk, then rerun",
    errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere, then rerun",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOTDIR: "a path component is a file, not a folder: choose another path",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENOTEMPTY: "remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n) or use fewer --workers",
}


def _worker_original(text: str) -> tuple[str, str] | None:
    """``(exception type, message)`` of the original error inside a DataLoader worker's re-raised
    message (``Caught X in DataLoader worker process N. Original Traceback … X: message``)."""
    m = _WORKER.search(text)
    if not m:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head, sep, msg = ln.partition(": ")
        if sep and head.split(".")[-1] == m.group(1):
            return m.group(1), msg.strip()
    return m.group(1), lines[-1].strip() if lines else ""


def as_user_error(exc: BaseException) -> TbxError | None:
    """The :class:`TbxError` for a failure the user can fix, else None (a bug: keep the traceback).

    * a TbxError (also one re-raised by a DataLoader worker: unwrapped to its original line);
    * ``OSError`` (read-only folder, full disk, a folder where a file is expected, …): the
      operating system's reason, the path and a fix;
    * ``ValueError`` / ``RuntimeError`` raised by a library on the user's data or options (a
      worker's one unwrapped to its original line): the first line of its message.
    """
    if not isinstance(exc, (TbxError, OSError, ValueError, RuntimeError)):
        return None
    orig = _worker_original(exc.what if isinstance(exc, TbxError) else str(exc))
    if orig is not None:  # re-raised by a DataLoader worker: its original line, not its traceback
        kind, msg = orig
        if kind == "TbxError":
            return TbxError(msg)  # the worker's one_line(): what [where] — fix, already joined
        return TbxError(
            f"{kind} in a data-loading worker: {msg}",
            fix="check the file named (rerun with --debug for the traceback)",
        )
    if isinstance(exc, TbxError):
        return exc
    if isinstance(exc, OSError):
        reason = exc.strerror or _clean(str(exc)) or type(exc).__name__
        path = exc.filename if exc.filename is not None else None
        if exc.filename2 is not None:
            path = f"{exc.filename} → {exc.filename2}"
        fix = _OS_FIX.get(exc.errno or -1, "check the path and its permissions")
        if not exc.strerror and exc.errno is None:  # e.g. PIL's UnidentifiedImageError
            return TbxError(f"cannot read a file ({reason})", path, "check the file (or --debug)")
        return TbxError(reason[:1].lower() + reason[1:], path, fix)
    if isinstance(exc, (ValueError, RuntimeError)):
        text = str(exc)
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        if "out of memory" in first.lower():
            return TbxError(
                f"{type(exc).__name__}: {first[:160]}",
                fix="lower the batch size (--batch, --set stageN.batch_size=…) or input size",
            )
        return TbxError(
            f"{type(exc).__name__}: {first}",
            fix="check the inputs and options named (rerun with --debug for the traceback)",
        )
    return None
