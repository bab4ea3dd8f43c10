"""`tbx demo`."""

from __future__ import annotations

from tbx.errors import TbxError


def demo() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx demo' is not implemented yet")
