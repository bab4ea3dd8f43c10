"""`tbx train`."""

from __future__ import annotations

from tbx.errors import TbxError


def train() -> None:
    """(not implemented yet)"""
    raise TbxError("'tbx train' is not implemented yet")
