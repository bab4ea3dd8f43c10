"""`tbx dataset build` and `tbx dataset validate`."""

from __future__ import annotations

from tbx.errors import TbxError


def build() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx dataset build' is not implemented yet")


def validate() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx dataset validate' is not implemented yet")
