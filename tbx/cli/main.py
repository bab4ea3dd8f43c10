"""The ``tbx`` command: a thin typer skin over the library (one module per command group).

User mistakes raise :class:`tbx.errors.TbxError`, printed here as one line with exit code 2
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from tbx.errors import TbxError

app = typer.Typer(name="tbx", help="Computer-aided TB diagnosis on chest X-rays: curate, train, "
                  "benchmark and report (TBX11K + SymFormer).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")


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
    from tbx.cli import dataset, dataset_build, demo, models, predict, report, split, study, train

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
    app.command("report", help=report.report.__doc__)(report.report)
    app.command("demo", help=demo.demo.__doc__)(demo.demo)
    _REGISTERED.add("rest")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by the console script and by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _register(args)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        app(args=args, prog_name="tbx")  # standalone mode: always ends with SystemExit
        return 0
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except TbxError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(e.one_line())}", markup=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
