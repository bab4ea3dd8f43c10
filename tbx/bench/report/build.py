"""The driver: load the runs, build the tables and figures, write the report atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tbx.bench.report.config import ReportConfig, ReportResult
from tbx.bench.report.explain import explain_table
from tbx.bench.report.figures import _figures_for_runs
from tbx.bench.report.pages import render_html, render_report_md
from tbx.bench.report.render import render_csv, render_latex, render_markdown
from tbx.bench.report.runs import Run, _check_study, _read_json, fold_groups, load_run, study_file
from tbx.bench.report.tables import (
    Table,
    classification_table,
    complexity_table,
    detection_table,
    reader_table,
    screening_table,
)
from tbx.errors import TbxError
from tbx.io import atomic_dir, atomic_write_text, check_replaceable
from tbx.provenance import write_provenance


def _is_replaceable(out: Path) -> bool:
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    entries = list(out.iterdir())
    if not entries:
        return True
    prov = out / "provenance.json"
    if prov.is_file():
        try:
            return json.loads(prov.read_text()).get("kind") == "tbx-report"
        except (json.JSONDecodeError, AttributeError):
            return False
    return False


def _normal_permissions(root: Path) -> None:
    """Temp files/dirs are created private (0600/0700); give the finished report the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def build_tables(runs: list[Run], cfg: ReportConfig, study: dict[str, Any] | None) -> list[Table]:
    groups = fold_groups(runs)
    ref = cfg.reference == "paper"
    tables = [
        classification_table(runs, groups, ref),
        complexity_table(runs, groups, ref),
        detection_table(runs, groups, ref),
        screening_table(runs, groups),
    ]
    if study or any(r.study for r in runs) or ref:
        tables.append(reader_table(runs, study, ref))
    explain = explain_table([(r.name, r.path) for r in runs])  # RUN/explain/*/explain.json
    if explain is not None:
        tables.append(explain)
    return tables


def make_report(run_dirs: list[Path], out: Path, cfg: ReportConfig | None = None) -> ReportResult:
    """Write tables, figures, ``report.html`` and ``provenance.json`` for ``run_dirs`` into ``out``."""
    cfg = cfg or ReportConfig()
    if not run_dirs:
        raise TbxError("no run directories given", fix="tbx report runs/<name> [runs/<other> ...] --out DIR")
    out = Path(out)
    if not _is_replaceable(out):
        raise TbxError(
            "output directory exists and is not an earlier tbx report",
            out,
            "choose a new --out directory (it is replaced as a whole)",
        )
    seen: set[Path] = set()
    for p in run_dirs:
        if Path(p).resolve() in seen:
            raise TbxError("run directory given twice", p, "name each run once")
        seen.add(Path(p).resolve())
    check_replaceable(out, "report", run_dirs)
    runs = [load_run(p) for p in run_dirs]
    names: dict[str, int] = {}
    for r in runs:  # disambiguate equal directory names from different parents
        names[r.name] = names.get(r.name, 0) + 1
    for r in runs:
        if names[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    study = None
    if cfg.study is not None:
        sf = study_file(cfg.study)
        study = _check_study(_read_json(sf), sf)
    notes = [n for r in runs for n in r.notes]
    if study is None and not any(r.study for r in runs):
        notes.append("no study comparison (study_compare.json / --study) — reader points and rows skipped")
    tables = build_tables(runs, cfg, study)
    for t in tables:
        if not any(r.kind in ("ours", "folds", "reader") for r in t.rows) and t.key != "readers":
            notes.append(f"table '{t.key}': no run provides these metrics")
    title = "tbx report"
    result = ReportResult(out=out, runs=[r.name for r in runs])

    import matplotlib

    matplotlib.use("Agg", force=False)

    with atomic_dir(out, overwrite=True, kind="report", inputs=run_dirs) as tmp:
        tdir = tmp / "tables"
        for t in tables:
            paths = []
            for fmt, render in (("md", render_markdown), ("tex", render_latex), ("csv", render_csv)):
                if fmt in cfg.formats:
                    p = tdir / f"{t.key}.{fmt}"
                    atomic_write_text(p, render(t))
                    paths.append(p)
            result.tables[t.key] = paths
        figs: list[tuple[str, list[Path]]] = []
        if cfg.figures:
            figs = _figures_for_runs(runs, cfg, study, tmp / "figures", notes)
        notes_text = "\n".join(notes) + ("\n" if notes else "")
        atomic_write_text(tmp / "notes.txt", notes_text)
        if "md" in cfg.formats:
            atomic_write_text(tmp / "report.md", render_report_md(tables, figs, runs, notes, tmp, title))
            result.markdown = out / "report.md"
        if "html" in cfg.formats:
            atomic_write_text(tmp / "report.html", render_html(tables, figs, runs, notes, title))
            result.html = out / "report.html"
        write_provenance(
            tmp,
            cfg,
            None,
            kind="tbx-report",
            runs=[
                {"name": r.name, "path": str(r.path.resolve()), "model": r.model, "fold": r.fold}
                for r in runs
            ],
            study=str(cfg.study) if cfg.study else None,
            notes=notes,
        )
        _normal_permissions(tmp)
        result.figures = [out / p.relative_to(tmp) for _, ps in figs for p in ps]
        result.tables = {k: [out / p.relative_to(tmp) for p in v] for k, v in result.tables.items()}
    result.notes_file = out / "notes.txt"
    result.provenance = out / "provenance.json"
    result.notes = notes
    return result
