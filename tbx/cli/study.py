"""`tbx study` commands: the radiologist reading study (docs/dataset.md §1.5)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tbx.bench.study import CompareConfig, StudyConfig, load_study, run_compare, sample_study, write_sheet

app = typer.Typer(
    help="The radiologist reading study (docs/dataset.md §1.5): sample → sheet → compare.",
    no_args_is_help=True,
)


@app.command("sample")
def sample(
    root: Path = typer.Argument(
        ..., help="Split dataset root (annotations/json/TBX11K_<split>.json + imgs/)."
    ),
    out: Path = typer.Option(..., "--out", help="Study folder to create."),
    split: str = typer.Option("test", "--split", help="Split to draw from."),
    n_healthy: int = typer.Option(140, "--n-healthy", min=0, help="Healthy cases."),
    n_sick: int = typer.Option(140, "--n-sick", min=0, help="Sick-but-non-TB cases."),
    n_tb: int = typer.Option(120, "--n-tb", min=0, help="TB cases."),
    tb_mix: str = typer.Option(
        "63:41:15:1",
        "--tb-mix",
        help="TB mix active-only:latent-only:both:uncertain (counts when they "
        "sum to --n-tb, else proportions).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    copy: bool = typer.Option(False, "--copy", help="Copy images instead of hard-linking."),
    force: bool = typer.Option(False, "--force", help="Replace an existing study folder."),
) -> None:
    """Draw the study cases in random reading order: cases.csv + images/case_NNN.png for readers,
    key.csv (gold) + study.json for the coordinator only. Defaults = the paper's 400 cases."""
    cfg = StudyConfig(
        split=split, n_healthy=n_healthy, n_sick=n_sick, n_tb=n_tb, tb_mix=tb_mix, seed=seed, link=not copy
    )
    path = sample_study(root, out, cfg, force=force)
    cases, meta = load_study(path)
    comp = ", ".join(f"{k} {v}" for k, v in meta["composition"].items())
    Console().print(
        f"{len(cases)} cases ({comp}) written to {path}\n"
        "give readers reading_form.html (tbx study sheet) or cases.csv + images/; "
        "keep key.csv and study.json away from them"
    )


@app.command("sheet")
def sheet(study_dir: Path = typer.Argument(..., help="Study folder (from tbx study sample).")) -> None:
    """Write the offline reading form reading_form.html (one case at a time, keys 1-5, window/level,
    zoom, reading time; images embedded; "Export reads" downloads reads_<reader>.csv) and a blank
    reads_template.csv (case_id,label,comment,seconds) for spreadsheet users."""
    html_path, template = write_sheet(study_dir)
    Console().print(
        f"reading form: {html_path}\nspreadsheet template: {template}\n"
        "labels: healthy, sick, active, latent, active+latent"
    )


@app.command("compare")
def compare_cmd(
    study_dir: Path = typer.Argument(..., help="Study folder."),
    reads: list[Path] = typer.Argument(
        ..., help="One reads CSV per reader (case_id,label[,comment][,seconds])."
    ),
    pred: Path = typer.Option(
        None,
        "--pred",
        help="Prediction dir (cls_result.txt) for the study's source annotation file (or all_<split>.json).",
    ),
    json_out: Path = typer.Option(None, "--json", help="Output JSON (default STUDY_DIR/study_compare.json)."),
    n_boot: int = typer.Option(2000, "--n-boot", min=1, help="Bootstrap resamples for the 95 % CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Score readers vs gold (accuracy with TB types, 3-class accuracy, sensitivity, specificity,
    Cohen's kappa, CIs, inter-reader agreement) and, with --pred, the model on the same cases with
    a paired McNemar test per reader; with a seconds column, each reader's median and total
    reading time."""
    res, out = run_compare(study_dir, list(reads), pred, json_out, CompareConfig(n_boot=n_boot, seed=seed))
    con = Console()

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    def median_s(rt):
        return "–" if rt is None else f"{rt['median_s']:.1f}"

    def total_hms(rt):
        if rt is None:
            return "–"
        s = round(rt["total_s"])
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def ci(m, k):
        lo, hi = m["ci"].get(k, [None, None])
        return "" if lo is None else f" [{pct(lo)}, {pct(hi)}]"

    t = Table(
        title=f"reading study: {res['n_cases']} cases (paper radiologist: 84.8 % 3-class, 68.7 % with types)"
    )
    for col in (
        "reader",
        "acc. types %",
        "acc. 3-class %",
        "sens %",
        "spec %",
        "kappa",
        "median s",
        "total time",
    ):
        t.add_column(col, justify="right" if col != "reader" else "left")
    for r in res["readers"]:
        t.add_row(
            r["name"],
            pct(r["accuracy_types"]) + ci(r, "accuracy_types"),
            pct(r["accuracy_3class"]) + ci(r, "accuracy_3class"),
            pct(r["sensitivity"]),
            pct(r["specificity"]),
            "–" if r["kappa_vs_gold"] is None else f"{r['kappa_vs_gold']:.3f}",
            median_s(r["reading_time"]),
            total_hms(r["reading_time"]),
        )
    if len(res["readers"]) > 1:
        a = res["average"]
        t.add_row(
            "average",
            pct(a["accuracy_types"]),
            pct(a["accuracy_3class"]),
            pct(a["sensitivity"]),
            pct(a["specificity"]),
            "–" if a["kappa_vs_gold"] is None else f"{a['kappa_vs_gold']:.3f}",
            "",
            "",
            style="bold",
        )
    m = res["model"]
    if m:
        t.add_row(
            "model",
            "n/a",
            pct(m["accuracy_3class"]) + ci(m, "accuracy_3class"),
            pct(m["sensitivity"]),
            pct(m["specificity"]),
            "–" if m["kappa_vs_gold"] is None else f"{m['kappa_vs_gold']:.3f}",
            "",
            "",
            style="cyan",
        )
    con.print(t)
    for r in res["readers"]:
        rt = r["reading_time"]
        if rt is not None and rt["n_timed"] < rt["n_cases"]:
            con.print(
                f"reading time of {r['name']}: over the {rt['n_timed']} of {rt['n_cases']} cases with a time"
            )
    for test in res["tests"]:
        con.print(
            f"McNemar model vs {test['reader']}: b={test['b']} c={test['c']} "
            f"{test['method']} p={test['p_value']:.4g}"
        )
    if res["agreement"]:
        ag = res["agreement"]
        kappa = "–" if ag["kappa"] is None else f"{ag['kappa']:.3f}"
        con.print(f"inter-reader agreement ({ag['method']} kappa): {kappa}")
    con.print(f"wrote {out}")
