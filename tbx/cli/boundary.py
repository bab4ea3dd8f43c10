"""The error boundary's pieces shared by :mod:`tbx.cli.main` and :mod:`tbx.cli.entry`, and the plain
``tbx bench`` line that skips typer.

Importing typer (and pydantic, which it uses to coerce options) costs about as much as scoring a
test set, so ``tbx bench --gt A --pred B [--mode M] [--json F] [--bootstrap N] [--seed N]
[--keep-uncertain] [--save-operating-points F]`` — each option once, every value well formed — is
parsed here and run by :func:`tbx.cli.bench_core.run_bench` inside the same error boundary.  Any
other command line (help, ``--opt=value``, a repeated or unknown option, a value typer would
reject, ``compare``, ``--debug``) goes to :func:`tbx.cli.main.main` unchanged, so help and usage
errors are typer's own.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tbx.errors import MAX_LINE, Interrupted, as_user_error

_VALUED = {
    "--gt": "gt",
    "--pred": "pred",
    "--mode": "mode",
    "--json": "json_out",
    "--bootstrap": "bootstrap",
    "--seed": "seed",
    "--save-operating-points": "save_operating_points",
}
_FLAGS = {"--keep-uncertain": True, "--no-keep-uncertain": False}
_INTS = ("bootstrap", "seed")
_STRS = ("mode",)


def plain_bench_args(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`run_bench` for a plain ``bench`` line, else None."""
    if not args or args[0] != "bench":
        return None
    out: dict[str, Any] = {}
    i = 1
    while i < len(args):
        tok = args[i]
        value: Any
        if tok in _FLAGS:
            key, value = "keep_uncertain", _FLAGS[tok]
            i += 1
        elif tok in _VALUED and i + 1 < len(args):
            key, value = _VALUED[tok], args[i + 1]
            i += 2
            if not value or value.startswith("-"):
                return None
            if key in _INTS:
                if not (value.isascii() and value.isdigit()):
                    return None
                value = int(value)
            elif key not in _STRS:
                value = Path(value)
        else:
            return None
        if key in out:
            return None
        out[key] = value
    return out if "gt" in out and "pred" in out else None


def print_error(text: str) -> None:
    """``error: TEXT`` on stderr, one line: user text is never read as rich markup or emoji codes."""
    from rich.console import Console
    from rich.text import Text

    err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False, markup=False)
    if len(text) > MAX_LINE - 7:
        text = text[: MAX_LINE - 8] + "…"
    err.print(Text.assemble(("error:", "bold red"), " ", text), soft_wrap=True)


def print_interrupted(hint: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True, highlight=False, emoji=False, markup=False).print(
        hint, style="yellow", markup=False
    )


def on_sigint(signum: int, frame: Any) -> None:
    raise Interrupted()


def guarded(fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``fn`` inside the one error boundary and return the exit code: a user's error is one
    line and exit 2, Ctrl-C is "interrupted" and 130; library warnings are hidden, and
    tracebacks replace the line, unless ``debug``."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
            rv = fn()
        return rv if isinstance(rv, int) else 0
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (Interrupted, KeyboardInterrupt) as e:
        print_interrupted(getattr(e, "hint", Interrupted.hint))
        return Interrupted.exit_code
    except Exception as e:  # noqa: BLE001 — the boundary: user errors → one line, bugs → traceback
        user = as_user_error(e)
        if user is None or debug:
            raise
        print_error(user.one_line())
        return user.exit_code
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


def try_plain_bench(args: list[str]) -> int | None:
    """Run a plain ``tbx bench`` line and return its exit code; None when typer must parse it."""
    kwargs = plain_bench_args(args)
    if kwargs is None:
        return None
    from tbx.cli.bench_core import run_bench

    return guarded(lambda: run_bench(**kwargs))
