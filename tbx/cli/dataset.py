"""`tbx dataset` commands (``synth`` and ``stats`` here; ``build``, ``validate`` and ``split`` are
registered from their own modules by :mod:`tbx.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    help="Curate TBX11K-layout datasets: synth, build, validate, stats, split (docs/dataset.md §1).",
    no_args_is_help=True,
)


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output directory (must not exist or be empty, unless --force)."),
    n_healthy: int = typer.Option(40, "--n-healthy", min=0, help="Healthy images."),
    n_sick: int = typer.Option(40, "--n-sick", min=0, help="Sick-but-non-TB images."),
    n_active: int = typer.Option(24, "--n-active", min=0, help="TB images with active lesions only."),
    n_latent: int = typer.Option(12, "--n-latent", min=0, help="TB images with latent lesions only."),
    n_both: int = typer.Option(6, "--n-both", min=0, help="TB images with active and latent lesions."),
    n_uncertain: int = typer.Option(
        2, "--n-uncertain", min=0, help="TB images of uncertain type (boxes of category 3)."
    ),
    size: int = typer.Option(
        512,
        "--size",
        min=32,
        help="Image side of the layout (raw: rendering resolution of the shorter side before upsampling).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed → byte-identical files)."),
    raw: bool = typer.Option(
        False,
        "--raw",
        help="Write a hospital-style export (original sizes, "
        "manifest.csv, xml/) instead of the TBX11K layout; input of "
        "`tbx dataset build`.",
    ),
    dicom: bool = typer.Option(
        False,
        "--dicom",
        help="With --raw: DICOM files (MONOCHROME1/2, 12–16 bit, window tags, fake PHI) instead of PNG.",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes (output independent of it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty OUT."),
) -> None:
    """Generate procedural chest X-rays: a synthetic TBX11K (healthy, sick, and active, latent,
    both or uncertain-type TB with boxes; split assigned) or, with --raw, a hospital-style export."""
    from tbx.data.synth import SynthConfig, plan_cases, synthesize

    cfg = SynthConfig(
        n_healthy=n_healthy,
        n_sick=n_sick,
        n_active=n_active,
        n_latent=n_latent,
        n_both=n_both,
        n_uncertain=n_uncertain,
        size=size,
        seed=seed,
        raw=raw,
        dicom=dicom,
        workers=workers,
    )
    total = len(plan_cases(cfg))  # validates the options before anything is written
    con = Console(stderr=True)
    with Progress(
        TextColumn("synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as bar:
        task = bar.add_task("synth", total=total)
        records = synthesize(
            out, cfg, overwrite=force, progress=lambda done, _n: bar.update(task, completed=done)
        )
    n_tb = sum(r.is_tb for r in records)
    n_boxes = sum(len(r.boxes) for r in records)
    kind = "DICOM export" if dicom else ("PNG export" if raw else f"TBX11K layout at {size}×{size}")
    Console().print(f"wrote {len(records)} images ({n_tb} TB, {n_boxes} boxes) as a {kind} to {out}")


def _stats_tables(s: dict) -> list[Table]:
    cols = [*s["splits"], "total"]
    tables = []
    t = Table(title="classes (docs/dataset.md §1.2)")
    t.add_column("class")
    for c in cols:
        t.add_column(c, justify="right")
    for name, row in s["classes"].items():
        t.add_row(name, *(str(row[c]) for c in cols), style="bold" if name == "total" else None)
    tables.append(t)
    if s["extra"]:
        t = Table(title="extra datasets")
        t.add_column("source")
        t.add_column("label")
        for c in cols:
            t.add_column(c, justify="right")
        for src, labels in s["extra"].items():
            for label, row in labels.items():
                t.add_row(src, label, *(str(row[c]) for c in cols))
        tables.append(t)
    t = Table(title="boxes per category")
    t.add_column("category")
    for c in cols:
        t.add_column(c, justify="right")
    for name, row in s["boxes"].items():
        t.add_row(name, *(str(row[c]) for c in cols), style="bold" if name == "all" else None)
    tables.append(t)
    hists = [("box area, 512 frame (COCO bins)", s["area_512"])]
    if s["area_original"] is not None:
        hists.append(("box area, original resolution (paper bins)", s["area_original"]))
    for title, hist in hists:
        t = Table(title=title)
        t.add_column("category")
        bins = list(hist["all"])
        for b in bins:
            t.add_column(b, justify="right")
        for name, row in hist.items():
            t.add_row(name, *(str(row[b]) for b in bins), style="bold" if name == "all" else None)
        tables.append(t)
    return tables


@app.command("stats")
def stats(
    root: Path = typer.Argument(
        ..., help="Layout root, annotation folder (e.g. the real metadata dir) or one COCO JSON file."
    ),
    json_out: Path = typer.Option(
        None, "--json", help="Also write the statistics as JSON here (+ <name>.provenance.json beside it)."
    ),
) -> None:
    """Class × split table (docs/dataset.md §1.2, incl. TB types and TB without box), boxes per category and
    box-area histograms (COCO bins at 512, the paper's bins at original resolution)."""
    from tbx.data.stats import stats_of
    from tbx.io import atomic_write_json
    from tbx.provenance import write_provenance

    s = stats_of(root)
    con = Console()
    con.print(f"{root}: {s['n_images']} images, {s['boxes']['all']['total']} boxes")
    for t in _stats_tables(s):
        con.print(t)
    skipped = [f"{n} box(es) of unknown category {c}" for c, n in s.get("unknown_categories", {}).items()]
    if s.get("degenerate_boxes"):
        skipped.append(f"{s['degenerate_boxes']} box(es) of zero or negative size")
    if skipped:
        con.print(
            f"warning: not counted: {'; '.join(skipped)} — see tbx dataset validate",
            style="yellow",
            markup=False,
            highlight=False,
        )
    if json_out is not None:
        atomic_write_json(json_out, s)
        write_provenance(
            json_out.parent,
            None,
            None,
            name=f"{json_out.stem}.provenance.json",
            inputs=[str(root)],
            outputs=[str(json_out)],
        )
        con.print(f"wrote {json_out}")
