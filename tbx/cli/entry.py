"""The ``tbx`` console script and ``python -m tbx``: a plain ``tbx bench --gt … --pred …`` line runs
without importing typer (:func:`tbx.cli.boundary.try_plain_bench`); every other line goes to
:func:`tbx.cli.main.main`."""

from __future__ import annotations

import sys

from tbx.cli.boundary import try_plain_bench


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rc = try_plain_bench(args)
    if rc is not None:
        return rc
    from tbx.cli.main import main as typer_main

    return typer_main(args)


def run() -> None:
    sys.exit(main())
