"""The ``tbx`` command: a thin typer skin over the library (one module per command group).

User mistakes raise :class:`tbx.errors.TbxError`, printed here as one line with exit code 2
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exceptions

from tbx.cli.boundary import guarded, print_error, try_plain_bench
from tbx.errors import Interrupted

app = typer.Typer(
    name="tbx",
    help="Computer-aided TB diagnosis on chest X-rays: curate, train, "
    "benchmark and report (TBX11K + SymFormer).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    """tbx — TBX11K curation, SymFormer training and the paper's benchmark protocol."""


_REGISTERED: set[str] = set()


def _register_bench() -> None:
    from tbx.cli import bench

    bench.app.rich_markup_mode = "markdown"
    app.add_typer(bench.app, name="bench")
    _REGISTERED.add("bench")


def _register(argv: list[str] | None = None) -> None:
    """Attach the command groups (idempotent).

    ``tbx bench …`` attaches only its own group, so scoring predictions imports neither torch nor
    the training stack; every other command line (``--help`` included) attaches all of them.
    """
    first = next((a for a in argv or () if not a.startswith("-")), None)
    if "bench" not in _REGISTERED:
        _register_bench()
    if first == "bench" or "rest" in _REGISTERED:
        return
    # Imported here so that `tbx --help` stays importable even while a group is broken.
    from tbx.cli import (
        dataset,
        dataset_build,
        demo,
        explain,
        export,
        models,
        predict,
        report,
        screen,
        split,
        study,
        train,
    )

    for group in (dataset.app, models.app, study.app):
        group.rich_markup_mode = "markdown"  # docstring paragraphs re-wrap instead of keeping breaks
    dataset.app.command("build", help=dataset_build.build.__doc__)(dataset_build.build)
    dataset.app.command("validate", help=dataset_build.validate.__doc__)(dataset_build.validate)
    dataset.app.command("split", help=split.split.__doc__)(split.split)
    app.add_typer(dataset.app, name="dataset")
    app.add_typer(models.app, name="models")
    app.add_typer(study.app, name="study")
    app.command("train", help=train.train.__doc__)(train.train)
    app.command("predict", help=predict.predict.__doc__)(predict.predict)
    app.command("screen", help=screen.screen.__doc__)(screen.screen)
    app.command("export", help=export.export.__doc__)(export.export)
    app.command("report", help=report.report.__doc__)(report.report)
    app.command("explain", help=explain.explain.__doc__)(explain.explain)
    app.command("demo", help=demo.demo.__doc__)(demo.demo)
    _REGISTERED.add("rest")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by the console script and by tests).

    The one error boundary: a :class:`TbxError` — or any failure :func:`tbx.errors.as_user_error`
    recognises as the user's (OS errors, library ``ValueError``/``RuntimeError``, a DataLoader
    worker's error unwrapped) — prints one line and exits 2; usage errors too.  Ctrl-C prints
    "interrupted" and exits 130 (temporary files are removed on the way out).  Library warnings
    are shown only with ``--debug`` (which also shows tracebacks instead of the line).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    rc = try_plain_bench(args)  # a plain `tbx bench --gt … --pred …`: no typer parsing
    if rc is not None:
        return rc
    debug = "--debug" in args
    _register(args)

    def call() -> int:
        try:
            rv = app(args=args, prog_name="tbx", standalone_mode=False)
            return rv if isinstance(rv, int) else 0
        except typer.Abort:
            raise Interrupted() from None
        except click_exceptions.NoArgsIsHelpError as e:
            app(args=[*args, "--help"], prog_name="tbx", standalone_mode=False)  # the rich help
            return e.exit_code
        except click_exceptions.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" — see '{ctx.command_path} --help'" if ctx is not None else ""
            print_error(" ".join(e.format_message().split()) + hint)
            return e.exit_code

    return guarded(call, debug)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
