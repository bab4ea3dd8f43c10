"""The ``tbx explain`` results in the report: the localisation score table of every
``RUN/explain/<method>/explain.json`` (:func:`explain_table`: Markdown / LaTeX / CSV like every
other table) and, in ``report.html``, a gallery of the best- and worst-localised TB cases.

Best / worst: among the run's TB images with ground-truth boxes (``energy_in_boxes`` not null),
the highest and the lowest heatmap energy inside the boxes (ties: file name); the two groups never
share an image.  The gallery shows the overlay PNGs ``tbx explain`` wrote, downscaled and embedded
(base64), so the report stays one self-contained file.  A missing or malformed ``explain.json``
costs its rows, with a note in the section, never the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from tbx.bench.report.render import render_html_table
from tbx.bench.report.runs import _num as number
from tbx.bench.report.tables import Cell, Row, Table

THUMB_WIDTH = 360
_STYLE = (
    "<style>.xg{display:flex;flex-wrap:wrap;gap:.6em}.xg figure{margin:0}"
    ".xg img{border:1px solid #ccc}.xg figcaption{font-size:.8em}</style>"
)


def _load(path: Path) -> dict[str, Any] | str:
    """The explain.json document, or the note saying why it is skipped."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"{path}: cannot read ({type(e).__name__}) — explain rows skipped"
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        return f"{path}: not a tbx explain.json (no 'images' list) — explain rows skipped"
    return doc


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def best_and_worst(images: list[Any], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` best- and ``n`` worst-localised TB images (see the module docstring)."""
    scored = [
        im
        for im in images
        if isinstance(im, dict)
        and im.get("label") == "tb"
        and isinstance(im.get("energy_in_boxes"), (int, float))
    ]
    scored.sort(key=lambda im: (-float(im["energy_in_boxes"]), str(im.get("file_name"))))
    n_best = min(n, math.ceil(len(scored) / 2))
    return scored[:n_best], scored[n_best:][::-1][:n]


def _thumb(folder: Path, rel: Any) -> str | None:
    """A base64 PNG thumbnail of ``folder/rel`` (inside ``folder`` only), or None."""
    if not isinstance(rel, str):
        return None
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
            width = THUMB_WIDTH * (2 if im.width > 1.6 * im.height else 1)  # features: two panels
            if im.width > width:
                im = im.resize(
                    (width, max(1, round(im.height * width / im.width))), Image.Resampling.BILINEAR
                )
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _documents(runs: Sequence[tuple[str, Path]]) -> list[tuple[str, Path, dict[str, Any] | str]]:
    """``(run name, explain.json path, document or skip note)`` for every run's explain outputs."""
    return [
        (name, path, _load(path))
        for name, run_dir in runs
        for path in sorted(Path(run_dir).glob("explain/*/explain.json"))
    ]


def explain_table(runs: Sequence[tuple[str, Path]]) -> Table | None:
    """The localisation scores of every readable explain.json (None when there is none).
    ``before``: the same scores on the feature maps before the symmetric block (method
    ``features``)."""
    rows = []
    for name, path, doc in _documents(runs):
        if isinstance(doc, str):
            continue
        rows.append(
            Row(
                [name, str(doc.get("method", path.parent.name)), str(doc.get("target", ""))],
                [
                    Cell(text=str(doc["n_scored"]) if isinstance(doc.get("n_scored"), int) else None),
                    *(
                        Cell(number(doc.get(k)), digits=3)
                        for k in (
                            "mean_energy_in_boxes",
                            "pointing_game",
                            "mean_energy_in_boxes_before",
                            "pointing_game_before",
                        )
                    ),
                ],
            )
        )
    if not rows:
        return None
    return Table(
        key="explain",
        title="Localisation of the tbx explain heatmaps (TB images with boxes)",
        label_columns=["Run", "Method", "Target"],
        columns=["TB images", "Energy in boxes", "Pointing game", "Energy before", "Pointing before"],
        csv_columns=["n_scored", "energy_in_boxes", "pointing_game", "energy_before", "pointing_before"],
        rows=rows,
        footnotes=[
            "Energy in boxes: the heatmap's mass inside the union of an image's ground-truth TB boxes over "
            "its total; pointing game: the share of images whose heatmap maximum lies in a box (TB images "
            "with boxes). Before: the same on the pyramid before the symmetric block (method features)."
        ],
    )


def explain_section(runs: Sequence[tuple[str, Path]], table: Table | None = None, n_gallery: int = 3) -> str:
    """The HTML fragment for ``runs`` (``(name, run directory)`` pairs): ``table``
    (:func:`explain_table`), the galleries and the skip notes; ``""`` when no run has an
    ``explain/*/explain.json``."""
    h = html.escape
    galleries: list[str] = []
    notes: list[str] = []
    for name, path, doc in _documents(runs):
        if isinstance(doc, str):
            notes.append(doc)
            continue
        method = str(doc.get("method", path.parent.name))
        best, worst = best_and_worst(doc["images"], n_gallery)
        figs = []
        for tag, group in (("best", best), ("worst", worst)):
            for im in group:
                b64 = _thumb(path.parent, im.get("overlay"))
                if b64 is None:
                    notes.append(f"{path.parent}: overlay of {im.get('file_name')} missing — not shown")
                    continue
                hit = "hit" if im.get("pointing_hit") else "miss"
                cap = f"{tag}: {im.get('file_name')} · energy {_num(im.get('energy_in_boxes'), 2)} · {hit}"
                figs.append(
                    f'<figure><img alt="{h(cap)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{h(cap)}</figcaption></figure>"
                )
        if figs:
            galleries.append(
                f"<h3>{h(name)} — {h(method)}: best- and worst-localised TB cases</h3>"
                f'<div class="xg">{"".join(figs)}</div>'
            )
    if table is None and not notes:
        return ""
    out = [_STYLE, "<h2>Where the models look (tbx explain)</h2>"]
    if table is not None:
        out.append(render_html_table(table))
    out += galleries
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{h(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)
