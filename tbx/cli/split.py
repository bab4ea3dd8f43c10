"""`tbx dataset split`."""

from __future__ import annotations

from tbx.errors import TbxError


def split() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx dataset split' is not implemented yet")
