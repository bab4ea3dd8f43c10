"""Atomic file output: every file tbx writes goes to a temporary sibling first, then is renamed.

A crash or an error never leaves a half-written JSON/CSV/PNG behind.  Directories that must appear
all-or-nothing are built in a temporary sibling and moved into place with :func:`atomic_dir`.
Also the one CSV reader (:func:`read_csv`) and :func:`link_or_copy`.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tbx.errors import TbxError, where


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get ordinary permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` only if the block succeeds.

    Use for writers that want a filename (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``).
    """
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Deterministic JSON text (insertion-ordered keys, trailing newline)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, dumps_json(obj, indent))


OUTPUT_MARKER = ".tbx-output.json"
"""File that every folder tbx creates carries: ``{"kind": ..., "tbx_version": ...}``.  Commands may
replace (``--force`` / ``--overwrite``) only an empty folder or one that carries it."""


def mark_output(folder: str | Path, kind: str) -> Path:
    """Write the ownership marker into ``folder`` (created if needed); ``kind`` names the command's
    output (``"dataset"``, ``"run"``, ``"screen"``, ``"report"`` …).  Return the marker's path."""
    from tbx import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    atomic_write_json(marker, {"kind": kind, "tbx_version": __version__})
    return marker


def output_kind(folder: str | Path) -> str | None:
    """The ``kind`` of a folder tbx created (its marker), else None (not tbx's, or unreadable)."""
    marker = Path(folder) / OUTPUT_MARKER
    try:
        kind = json.loads(marker.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _within(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or a.is_relative_to(b)


def check_replaceable(dest: str | Path, kind: str | None = None, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse (:class:`TbxError`) to replace ``dest`` unless tbx owns it: ``dest`` must be absent,
    an empty folder, or a folder carrying tbx's marker (of ``kind`` when given) — and it must never
    hold or lie inside one of the command's ``inputs``.  Call it before any work; the shared
    :func:`replace_dir` / :func:`atomic_dir` call it again just before they replace."""
    from tbx.errors import TbxError

    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir() or dest.is_symlink():
        raise TbxError("the output path exists and is not a folder", dest, "choose another output folder")
    real = dest.resolve()
    for inp in inputs:
        i = Path(inp).resolve()
        if _within(i, real) or _within(real, i):
            raise TbxError(
                "the output folder holds or lies inside the command's input "
                f"'{inp}'; replacing it would delete the input",
                dest,
                "choose an output folder outside the inputs",
            )
    if not any(dest.iterdir()):
        return
    have = output_kind(dest)
    if have is None:
        raise TbxError(
            "the output folder is not empty and was not created by tbx (tbx replaces only its own outputs)",
            dest,
            "choose another output folder (or empty it yourself)",
        )
    if kind is not None and have != kind:
        raise TbxError(
            f"the output folder holds a tbx {have}, not a {kind}; tbx will not replace it",
            dest,
            "choose another output folder",
        )


def replace_dir(
    src: Path, dest: Path, overwrite: bool = False, kind: str | None = None, inputs: Sequence[str | Path] = ()
) -> None:
    """Move the finished directory ``src`` to ``dest``; an existing ``dest`` is replaced (removed
    only after the new one is in place) when ``overwrite`` and :func:`check_replaceable` allows
    it, else :class:`FileExistsError`.  ``kind``: mark ``src`` as tbx's output of that kind."""
    if kind is not None:
        mark_output(src, kind)
    if not dest.exists():
        os.replace(src, dest)
        return
    if not overwrite:
        raise FileExistsError(dest)
    check_replaceable(dest, kind, inputs)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old)


TMP_SUFFIX = ".tmp"


def clean_stale_tmp(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove temporary files/folders that a killed tbx process left in ``folder`` (the
    ``.NAME.XXXX.tmp`` siblings of :func:`atomic_path` / :func:`atomic_dir`); return them.
    Called when a command resumes in a folder it owns (a run, a build's ``OUT.partial``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f".*{TMP_SUFFIX}") if recursive else folder.glob(f".*{TMP_SUFFIX}")
    removed = []
    for p in sorted(found, key=lambda q: -len(q.parts)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, overwrite: bool = False, kind: str | None = None, inputs: Sequence[str | Path] = ()
) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then move it to ``path`` on success.

    With ``overwrite`` an existing ``path`` is replaced (removed only after the new one is
    complete) — only when :func:`check_replaceable` allows it, checked before the block runs.
    Temporary siblings a killed earlier run left for ``path`` are removed first.
    ``kind``: the finished folder carries tbx's output marker of that kind.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(path)
        check_replaceable(path, kind, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"):  # a killed earlier run's
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, path, overwrite, kind, inputs)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def link_or_copy(src: Path, dst: Path, link: bool = True) -> None:
    """``dst`` as a hard link to ``src`` (a copy where linking fails, or with ``link=False``),
    written atomically (a temporary sibling renamed into place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        if not link:
            raise OSError("copy requested")
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a UTF-8 CSV (BOM allowed) as ``(line number, {column: value})``: header names
    stripped and lower-cased, values stripped, blank rows skipped, missing trailing cells "".
    A missing file, bad encoding, empty file or missing ``required`` column is a TbxError."""
    if not path.is_file():
        raise TbxError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise TbxError(f"cannot read CSV ({e})", path, "save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise TbxError("empty CSV file", path, f"write a header line: {','.join(required)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise TbxError(
            f"missing column(s) {', '.join(missing)} in the CSV header",
            where(path, 1),
            f"the header must contain {','.join(required)}",
        )
    rows = []
    for row in reader:
        if not any(v.strip() for v in row):
            continue
        cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        rows.append((reader.line_num, cells))
    return rows
