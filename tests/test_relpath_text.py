"""``check_relpath_text`` (no PurePosixPath per image) = the PurePosixPath rules it replaced."""

from __future__ import annotations

import itertools
import re
from pathlib import PurePosixPath

from tbx.data.layout import check_relpath_text
from tbx.errors import TbxError


def _reference(rel: object) -> str:
    """The rules as written before the fast path: PurePosixPath's is_absolute and parts."""
    text = (rel if isinstance(rel, str) else "").strip()
    if not text:
        return "empty"
    posix = text.replace("\\", "/")
    p = PurePosixPath(posix)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", posix):
        return "absolute"
    if ".." in p.parts:
        return "escapes"
    return "ok"


def _fast(rel: object) -> str:
    try:
        check_relpath_text(rel)  # type: ignore[arg-type]
    except TbxError as e:
        msg = str(e)
        return "empty" if "empty" in msg else "absolute" if "absolute" in msg else "escapes"
    return "ok"


def test_same_verdict_on_odd_paths() -> None:
    pieces = ["a", "..", ".", "", "/", "\\", "C:", "z:", "1:", "..a", "a..", " ", "é", "//", "tb"]
    paths: list[object] = [None, 3, "", "   ", "\t..\t"]
    paths += ["".join(t) for n in (1, 2, 3) for t in itertools.product(pieces, repeat=n)]
    for p in paths:
        assert _fast(p) == _reference(p), repr(p)
    assert _reference("tb/../x") == "escapes" and _reference("C:/x") == "absolute"  # the cases exist
