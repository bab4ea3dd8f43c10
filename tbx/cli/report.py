"""`tbx report`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def report(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories (runs/<name>: config.yaml, bench/*.json, predictions/, metrics.jsonl, …).",
        show_default=False,
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output directory (replaced as a whole; must be new, empty or an earlier report).",
        show_default=False,
    ),
    format: str = typer.Option(
        "md,tex,csv,html", "--format", "-f", help="Comma-separated table formats: md, tex, csv, html."
    ),
    reference: str = typer.Option(
        "paper",
        "--reference",
        help="'paper': put the published numbers (docs/protocol.md §4.4) beside ours; 'none'.",
    ),
    study: Path | None = typer.Option(
        None,
        "--study",
        help="Directory of `tbx study compare` (study_compare.json) for reader rows and ROC points.",
    ),
    overlays: int = typer.Option(
        6,
        "--overlays",
        min=0,
        help="Detection overlay images per run (best / worst / "
        "most uncertain; 0 = none). Needs the dataset named in "
        "predictions/manifest.json.",
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the figures (PNG + PDF)."),
) -> None:
    """Paper tables (Markdown, LaTeX, CSV), figures and a self-contained report.html from run directories."""
    from tbx.bench.report import ReportConfig, make_report

    cfg = ReportConfig(
        formats=format,
        reference=reference,
        study=study,  # type: ignore[arg-type]
        overlays=overlays,
        figures=figures,
    )
    res = make_report(list(runs), out, cfg)
    con = Console(highlight=False, soft_wrap=True)
    con.print(f"report of {len(res.runs)} run(s) → {res.out}", markup=False, style="bold")
    n_tables = sum(len(v) for v in res.tables.values())
    con.print(f"  tables: {n_tables} files in {res.out / 'tables'}", markup=False)
    con.print(f"  figures: {len(res.figures)} files in {res.out / 'figures'}", markup=False)
    if res.html:
        con.print(f"  html: {res.html}", markup=False)
    if res.markdown:
        con.print(f"  markdown: {res.markdown}", markup=False)
    for n in res.notes:
        con.print(f"  note: {n}", markup=False, style="yellow")
