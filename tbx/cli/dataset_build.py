"""`tbx dataset build` and `tbx dataset validate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tbx.data.build import BuildConfig, build_dataset
from tbx.data.duplicates import MIN_CORRELATION
from tbx.data.validate import ValidateConfig, validate_dataset
from tbx.io import atomic_write_json


def _progress(console: Console, what: str) -> tuple[Progress, Callable[[int, int], None]]:
    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(what, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def build(
    src: Path = typer.Argument(
        ...,
        help="Raw export (manifest.csv + images + xml/ or boxes.csv) "
        "or an official TBX11K root (imgs/, lists/, annotations/xml/).",
    ),
    out: Path = typer.Argument(..., help="Output dataset root (built in OUT.partial/, then renamed)."),
    size: int = typer.Option(512, "--size", min=32, help="Output side in px (the release: 512)."),
    channels: int = typer.Option(
        1,
        "--channels",
        min=1,
        max=3,
        help="1 = 8-bit grayscale PNG; 3 = RGB PNG with equal channels (byte layout of the release's PNGs).",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Decoding processes."),
    seed: int = typer.Option(0, "--seed", help="Split seed (raw exports without a split column)."),
    ratio: str = typer.Option(
        None,
        "--ratio",
        help="TB train:val:test for the split, as in tbx dataset split (default 3:2:1 on each TB type).",
    ),
    tb_quota: str = typer.Option(
        None, "--tb-quota", help="type (default): --ratio on each TB type; class: on the TB class as a whole."
    ),
    published: bool = typer.Option(
        False, "--published", help="The published split's rule (TB 3:1:2, class quota; docs/dataset.md §1.2)."
    ),
    salt: str = typer.Option(
        None,
        "--salt",
        help="Secret for the patient-id HMAC (never written). "
        "Default: a fixed public constant (reproducible, not secret).",
    ),
    mapping: Path = typer.Option(
        None, "--mapping", help="Write the CSV original → new file name here (must lie outside OUT and SRC)."
    ),
    name_pattern: str = typer.Option(
        "{prefix}{n:04d}", "--name-pattern", help="Generated stems: fields {prefix} (h/s/tb), {n}, {label}."
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip bad inputs (listed in build_report.json) instead of stopping."
    ),
    allow_multi: bool = typer.Option(
        False, "--allow-multi-per-patient", help="Keep every image of a patient (default: the first)."
    ),
    no_images: bool = typer.Option(
        False, "--no-images", help="Release roots: metadata only (automatic when imgs/ is absent)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing OUT (unchanged images are reused, not decoded again)."
    ),
) -> None:
    """Build the TBX11K layout (docs/dataset.md §1.3) from a raw hospital export or an official release root.

    Raw exports: images (PNG/JPEG/DICOM, any size) become 512×512 8-bit PNGs with generated names;
    boxes are converted with the official rule; patient ids are replaced by salted hashes; one
    image per patient is kept unless --allow-multi-per-patient (exact pixel duplicates are always
    dropped); duplicates and skipped rows are reported by manifest line; the split
    comes from the manifest's split column or is assigned like `tbx dataset split`. Release roots:
    every official JSON is regenerated from lists/ and annotations/xml/. Resumable: a failed build
    leaves OUT.partial/, which the next run reuses. Writes build_report.json and provenance.json.
    """
    cfg = BuildConfig(
        size=size,
        channels=channels,
        workers=workers,
        seed=seed,
        ratio=ratio,
        tb_quota=tb_quota,
        published=published,
        salt=salt,
        mapping=str(mapping) if mapping else None,
        name_pattern=name_pattern,
        skip_bad=skip_bad,
        allow_multi_per_patient=allow_multi,
        no_images=no_images,
        overwrite=overwrite,
    )
    con = Console()
    bar, update = _progress(con, "building")
    with bar:
        rep = build_dataset(src, out, cfg, progress=update)
    table = Table(title=f"built {out} ({rep.kind} source)")
    table.add_column("")
    table.add_column("count", justify="right")
    for k, v in (
        ("images", rep.n_images),
        ("boxes", rep.counts.get("boxes", 0)),
        *((f"label {a}", b) for a, b in rep.counts.get("by_label", {}).items()),
        *((f"split {a}", b) for a, b in rep.counts.get("by_split", {}).items()),
        ("decoded", rep.decoded),
        ("reused (resume)", rep.reused),
        ("duplicates dropped", sum(d["action"] == "dropped" for d in rep.duplicates)),
        ("skipped (bad)", len(rep.skipped_bad)),
    ):
        table.add_row(k, str(v))
    con.print(table)
    for line in rep.console:
        con.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
    for d in rep.duplicates:
        con.print(
            f"duplicate ({d['kind']}): manifest line {d['manifest_line']} = line "
            f"{d['duplicate_of_line']} → {d['action']}",
            highlight=False,
        )
    for w in rep.warnings:
        con.print(f"warning: {w}", style="yellow", markup=False, highlight=False)
    con.print(f"wrote {out} (build_report.json, provenance.json)")


def validate(
    root: Path = typer.Argument(
        ..., help="Dataset root (annotations/json/ [+ imgs/, lists/]) or a folder of official JSONs."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit 1)."),
    images: str = typer.Option("auto", "--images", help="auto (check images when imgs/ exists) | yes | no."),
    no_images: bool = typer.Option(False, "--no-images", help="Same as --images no."),
    threshold: int = typer.Option(
        4,
        "--dup-threshold",
        min=0,
        max=64,
        help="pHash Hamming distance (of 64) for near-duplicate candidates.",
    ),
    min_corr: float = typer.Option(
        MIN_CORRELATION,
        "--dup-correlation",
        min=-1.0,
        max=1.0,
        help="Pixel correlation (256×256) at which a candidate is confirmed and reported.",
    ),
    max_rows: int = typer.Option(50, "--max-rows", min=0, help="Rows shown in the table (all in --json)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes decoding images."),
) -> None:
    """Check a TBX11K-layout dataset: images exist, decode and have the declared size; boxes inside
    and non-degenerate; valid categories; TB images boxed, non-TB images not; unique ids and names;
    lists agree with JSONs; disjoint splits; JSON boxes = XML boxes (official rule); near-duplicate
    images across splits/sources (perceptual hash, confirmed pixel by pixel: identical across splits =
    error). Exit 1 on errors (warnings too with --strict).
    """
    cfg = ValidateConfig(
        images="no" if no_images else images,
        strict=strict,
        dhash_threshold=threshold,
        near_duplicate_min_corr=min_corr,
        workers=workers,
    )
    con = Console()
    bar, update = _progress(con, "checking images")
    with bar:
        rep = validate_dataset(root, cfg, progress=update)
    if json_out:
        atomic_write_json(json_out, rep.to_dict())
    table = Table(title=f"validation of {root}")
    for c in ("severity", "check", "file", "message"):
        table.add_column(c, overflow="fold")
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in rep.findings[:max_rows]:
        table.add_row(
            Text(f.severity, style=colour[f.severity]), Text(f.check), Text(f.path), Text(f.message)
        )
    if rep.findings:
        con.print(table)
    if len(rep.findings) > max_rows:
        con.print(f"… {len(rep.findings) - max_rows} more finding(s) (see --json)")
    con.print(
        f"{len(rep.errors)} error(s), {len(rep.warnings)} warning(s), "
        f"{rep.stats.get('images', 0)} images in {len(rep.stats.get('files', {}))} file(s)"
    )
    if not rep.ok(strict):
        raise typer.Exit(1)
