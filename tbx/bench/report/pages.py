"""``report.html`` (self-contained) and ``report.md``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from tbx.bench.report.explain import explain_section
from tbx.bench.report.render import render_html_table, render_markdown
from tbx.bench.report.runs import Run
from tbx.bench.report.tables import Table

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .6em;
border-bottom:1px solid #ccc}thead th{border-bottom:2px solid #333}td.num{text-align:right;
font-variant-numeric:tabular-nums}tr.published td{color:#555;font-style:italic}tr.folds td{font-weight:600}
p.fn{font-size:.85em;color:#444;margin:.2em 0}figure{margin:1em 0}figure img{max-width:100%;
border:1px solid #ddd}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em}
.notes li{color:#8a4b00}"""


def _provenance_summary(r: Run) -> str:
    p = r.provenance or {}
    bits = []
    commit = p.get("git_commit") or p.get("commit")
    if commit:
        bits.append(f"commit {commit}")
    vers = p.get("versions")
    if isinstance(vers, dict):
        bits.append(", ".join(f"{k} {v}" for k, v in vers.items()))
    for k in ("data_hash", "dataset_hash", "data_sha256"):
        if p.get(k):
            bits.append(f"data hash {p[k]}")
    m = r.manifest or {}
    for k, name in (("checkpoint_sha256", "checkpoint sha256"), ("image_list_sha256", "image list sha256")):
        if m.get(k):
            bits.append(f"{name} {m[k]}")
    return "; ".join(bits) if bits else "no provenance.json"


def render_html(
    tables: list[Table], figs: list[tuple[str, list[Path]]], runs: list[Run], notes: list[str], title: str
) -> str:
    h = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{h(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{h(title)}</h1>",
        "<p>Runs: " + ", ".join(h(r.name) for r in runs) + "</p>",
        "<h2>Tables</h2>",
    ]
    out += [render_html_table(t) for t in tables if t.key != "explain"]  # it heads its own section
    out.append("<h2>Figures</h2>")
    for caption, paths in figs:
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is None:
            continue
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(
            f'<figure><img alt="{h(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{h(caption)}</figcaption></figure>"
        )
    explain = next((t for t in tables if t.key == "explain"), None)
    out.append(explain_section([(r.name, r.path) for r in runs], explain))  # RUN/explain/*/explain.json
    if notes:
        out.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{h(n)}</li>" for n in notes) + "</ul>")
    out.append("<h2>Provenance</h2>")
    for r in runs:
        out.append(f"<h3>{h(r.name)}</h3><p>{h(str(r.path.resolve()))}<br>{h(_provenance_summary(r))}</p>")
        if r.config:
            out.append(
                "<details><summary>config.yaml</summary><pre>"
                + h(yaml.safe_dump(r.config, sort_keys=False))
                + "</pre></details>"
            )
        if r.provenance:
            out.append(
                "<details><summary>provenance.json</summary><pre>"
                + h(json.dumps(r.provenance, indent=2, default=str))
                + "</pre></details>"
            )
        if r.manifest:
            out.append(
                "<details><summary>predictions/manifest.json</summary><pre>"
                + h(json.dumps(r.manifest, indent=2, default=str))
                + "</pre></details>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_report_md(
    tables: list[Table],
    figs: list[tuple[str, list[Path]]],
    runs: list[Run],
    notes: list[str],
    out_root: Path,
    title: str,
) -> str:
    lines = [f"# {title}", "", "Runs: " + ", ".join(f"`{r.name}`" for r in runs), ""]
    for t in tables:
        lines += [render_markdown(t), ""]
    if figs:
        lines += ["## Figures", ""]
        for caption, paths in figs:
            png = next((p for p in paths if p.suffix == ".png"), None)
            if png is not None:
                lines += [f"![{caption}]({png.relative_to(out_root).as_posix()})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Provenance", ""]
    for r in runs:
        lines.append(f"- `{r.name}`: {_provenance_summary(r)}")
    return "\n".join(lines) + "\n"
