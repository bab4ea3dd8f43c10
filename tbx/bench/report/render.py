"""Tables rendered as Markdown, LaTeX, CSV and HTML."""

from __future__ import annotations

import csv
import html
import io
import re

from tbx.bench.report.tables import Cell, Table

_TEX_ESC = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_UNI = {
    "†": r"\textsuperscript{\dag}",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "×": r"$\times$",
    "–": "--",
    "—": "---",
    "≤": r"$\leq$",
    "§": r"\S{}",
    "→": r"$\rightarrow$",
    "·": r"$\cdot$",
}


def tex_escape(s: str) -> str:
    """Escape LaTeX specials, map the few non-ASCII symbols the tables use, and quote "x" as ``x''."""
    out = "".join(_TEX_ESC.get(ch, ch) for ch in s)
    out = re.sub(r'"([^"]*)"', r"``\1''", out)
    for k, v in _TEX_UNI.items():
        out = out.replace(k, v)
    return out


def _cell_text(c: Cell, style: str) -> str:
    if c.text is not None:
        return tex_escape(c.text) if style == "tex" else c.text
    if c.value is None:
        return "--" if style == "tex" else "–"
    s = c.fmt(c.value)
    if c.sd is not None:
        s += (r" $\pm$ " if style == "tex" else " ± ") + c.fmt(c.sd)
    elif c.lo is not None and c.hi is not None:
        ci = f"[{c.fmt(c.lo)}, {c.fmt(c.hi)}]"
        s += (r" {\scriptsize " + ci + "}") if style == "tex" else f" {ci}"
    return s


def render_markdown(t: Table) -> str:
    head = list(t.label_columns)
    if t.groups:
        i = 0
        for g, n in t.groups:
            head += [f"{g} {c}" for c in t.columns[i : i + n]]
            i += n
    else:
        head += t.columns
    aligns = [":--"] * len(t.label_columns) + ["--:"] * len(t.columns)
    lines = [f"**{t.title}**", "", "| " + " | ".join(head) + " |", "| " + " | ".join(aligns) + " |"]
    for r in t.rows:
        labels = [x.replace("|", "\\|") for x in r.labels]
        lines.append("| " + " | ".join(labels + [_cell_text(c, "md") for c in r.cells]) + " |")
    if not t.rows:
        lines.append("| " + " | ".join(["(no data)"] + [""] * (len(head) - 1)) + " |")
    lines.append("")
    lines += [f"{fn}  " for fn in t.footnotes]
    return "\n".join(lines).rstrip() + "\n"


def render_latex(t: Table) -> str:
    ncol = len(t.label_columns) + len(t.columns)
    spec = "l" * len(t.label_columns) + "r" * len(t.columns)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + tex_escape(t.title) + "}",
        r"\label{tab:tbx-" + t.key + "}",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
    ]
    if t.groups:
        first = [""] * len(t.label_columns)
        rules, col = [], len(t.label_columns) + 1
        for g, n in t.groups:
            first.append(r"\multicolumn{" + str(n) + "}{c}{" + tex_escape(g) + "}")
            rules.append(r"\cmidrule(lr){" + f"{col}-{col + n - 1}" + "}")
            col += n
        out.append(" & ".join(first) + r" \\")
        out.append(" ".join(rules))
    out.append(" & ".join(tex_escape(h) for h in t.label_columns + t.columns) + r" \\")
    out.append(r"\midrule")
    prev_kind, prev_lead = None, None
    for r in t.rows:
        lead = r.labels[0] if len(t.label_columns) > 1 else None
        if prev_kind is not None and (r.kind != prev_kind or lead != prev_lead):
            out.append(r"\midrule")
        prev_kind, prev_lead = r.kind, lead
        out.append(
            " & ".join([tex_escape(x) for x in r.labels] + [_cell_text(c, "tex") for c in r.cells]) + r" \\"
        )
    if not t.rows:
        out.append(r"\multicolumn{" + str(ncol) + r"}{c}{(no data)} \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    if t.footnotes:
        out.append(r"\par\smallskip")
        notes = r" \\ ".join(tex_escape(f) for f in t.footnotes)
        out.append(r"\parbox{\linewidth}{\footnotesize " + notes + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def render_csv(t: Table) -> str:
    """Machine-readable: one row per table row, values in the table's units (percent for metrics)
    with 3 decimals, plus ``<col>_ci_lo/_ci_hi/_sd`` columns and ``kind`` (ours/folds/published/reader)."""
    names = t.csv_columns or t.columns
    if t.groups and not t.csv_columns:
        names = [
            f"{g}_{c}" for (g, n), i in zip(t.groups, range(len(t.groups))) for c in t.columns[i : i + n]
        ]
    extra_keys: list[str] = []
    for r in t.rows:
        for k in r.extra:
            if k not in extra_keys:
                extra_keys.append(k)
    has_ci = [any(r.cells[i].lo is not None for r in t.rows) for i in range(len(names))]
    has_sd = [any(r.cells[i].sd is not None for r in t.rows) for i in range(len(names))]
    header = [c.lower() for c in t.label_columns] + ["kind"]
    for i, n in enumerate(names):
        header.append(n)
        if has_ci[i]:
            header += [f"{n}_ci_lo", f"{n}_ci_hi"]
        if has_sd[i]:
            header.append(f"{n}_sd")
    header += extra_keys
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    for r in t.rows:
        row = list(r.labels) + [r.kind]
        for i, c in enumerate(r.cells):
            row.append(c.text if c.text is not None else f(c.value))
            if has_ci[i]:
                row += [f(c.lo), f(c.hi)]
            if has_sd[i]:
                row.append(f(c.sd))
        row += [r.extra.get(k, "") for k in extra_keys]
        w.writerow(row)
    return buf.getvalue()


def render_html_table(t: Table) -> str:
    h = html.escape
    parts = [f"<h3>{h(t.title)}</h3>", "<table>", "<thead>"]
    if t.groups:
        parts.append(
            "<tr>"
            + "".join("<th></th>" for _ in t.label_columns)
            + "".join(f'<th colspan="{n}">{h(g)}</th>' for g, n in t.groups)
            + "</tr>"
        )
    parts.append("<tr>" + "".join(f"<th>{h(c)}</th>" for c in t.label_columns + t.columns) + "</tr>")
    parts.append("</thead><tbody>")
    for r in t.rows:
        cls = f' class="{r.kind}"'
        parts.append(
            f"<tr{cls}>"
            + "".join(f"<td>{h(x)}</td>" for x in r.labels)
            + "".join(f'<td class="num">{h(_cell_text(c, "html"))}</td>' for c in r.cells)
            + "</tr>"
        )
    parts.append("</tbody></table>")
    parts += [f'<p class="fn">{h(fn)}</p>' for fn in t.footnotes]
    return "\n".join(parts)
