"""`tbx predict`."""

from __future__ import annotations

from tbx.errors import TbxError


def predict() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx predict' is not implemented yet")
