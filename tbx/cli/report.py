"""`tbx report`."""

from __future__ import annotations

from tbx.errors import TbxError


def report() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx report' is not implemented yet")
