"""`tbx dataset split`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tbx.data.records import SPLITS
from tbx.data.split import SplitConfig, run_split


def split(
    root: Path = typer.Argument(..., help="Dataset root (holds imgs/ and annotations/json/)."),
    ratio: str = typer.Option(
        None,
        "--ratio",
        help="TB train:val:test, applied to each TB type (default 3:2:1; uncertain-type TB always test).",
    ),
    non_tb_ratio: str = typer.Option(
        None, "--non-tb-ratio", help="Healthy and sick train:val:test (default 15:4:6 = 3000/800/1200)."
    ),
    extra_ratio: str = typer.Option(
        None,
        "--extra-ratio",
        help="Extra datasets (DA, DB, Montgomery, "
        "Shenzhen) per source × label; default: half to test, the "
        "other half train:val as in --ratio (3:2:1 → 3:2:5).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same inputs + seed → identical files)."),
    folds: int = typer.Option(
        0,
        "--folds",
        min=0,
        help="K > 1: also write a stratified, patient-grouped "
        "K-fold split of train+val (lists/fold{k}_{train,val}.txt + JSONs).",
    ),
    unknown_tb_as: str = typer.Option(
        "latent",
        "--unknown-tb-as",
        help="TB images without boxes "
        "(type unknown): latent (published: tb1199 counted as latent), "
        "own stratum, or test.",
    ),
    tb_quota: str = typer.Option(
        None,
        "--tb-quota",
        help="type (default): --ratio applies to each "
        "TB type on its own (every cell within ±1 of n·share); class: to "
        "the TB class as a whole, spread over the types proportionally.",
    ),
    published: bool = typer.Option(
        False,
        "--published",
        help="The published split's rule: TB "
        "3:1:2 with the class quota, healthy/sick 15:4:6 (every row and "
        "column total of the published table, exactly).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Where to write lists/ and annotations/json/ (default: ROOT)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing split files."),
) -> None:
    """Stratified, patient-grouped train/val/test split (docs/dataset.md §1.2), from annotation metadata only.

    Each TB type (active only, latent only, both) is split train:val:test by --ratio (default 3:2:1,
    as asked); uncertain-type TB always goes to test, on top; healthy and sick by --non-tb-ratio
    (15:4:6). `--published` (TB 3:1:2 over the TB class as a whole, healthy/sick 15:4:6) reproduces
    the published table's totals (docs/dataset.md §1.2): 3000/800/1200 healthy and sick, TB
    600/200/400 with the 10 uncertain in test, 6600/1800/2800 in total. Writes the
    official lists/*.txt and annotations/json/*.json, split_report.json and provenance_split.json;
    all-or-nothing, never overwriting without --force.
    """
    cfg = SplitConfig.from_options(
        published,
        ratio=ratio,
        non_tb_ratio=non_tb_ratio,
        extra_ratio=extra_ratio,
        seed=seed,
        folds=folds,
        unknown_tb_as=unknown_tb_as,
        tb_quota=tb_quota,
    )
    res = run_split(root, cfg, out=out, force=force)
    con = Console()
    r = res.plan.ratios
    quota = {"type": "per TB type", "class": "over the TB class"}.get(r["tb_quota"], r["tb_quota"])
    table = Table(
        title=f"split of {root} (TB {r['tb']} {quota}, non-TB {r['non_tb']}, extra {r['extra']}, seed {seed})"
    )
    table.add_column("class")
    for s in (*SPLITS, "total"):
        table.add_column(s, justify="right")
    for name, row in res.plan.table().items():
        style = "bold" if name == "total" else None
        table.add_row(name, *(str(row[s]) for s in (*SPLITS, "total")), style=style)
    con.print(table)
    for w in res.plan.warnings:
        con.print(f"[yellow]warning:[/] {w}")
    if res.removed:
        con.print(f"removed {len(res.removed)} stale split file(s)")
    con.print(f"wrote {len(res.written)} files under {res.out} (report: split_report.json)")
