"""The ``tbx explain`` section of ``report.html``: per run, the localisation score table of every
``RUN/explain/<method>/explain.json`` and a gallery of the best- and worst-localised TB cases.

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


def explain_section(runs: Sequence[tuple[str, Path]], n_gallery: int = 3) -> str:
    """The HTML fragment for ``runs`` (``(name, run directory)`` pairs); ``""`` when no run has an
    ``explain/*/explain.json``."""
    h = html.escape
    rows: list[str] = []
    galleries: list[str] = []
    notes: list[str] = []
    for name, run_dir in runs:
        for path in sorted(Path(run_dir).glob("explain/*/explain.json")):
            doc = _load(path)
            if isinstance(doc, str):
                notes.append(doc)
                continue
            method = str(doc.get("method", path.parent.name))
            before = ""
            if "mean_energy_in_boxes_before" in doc:
                before = (
                    f"before: {_num(doc.get('mean_energy_in_boxes_before'))} / "
                    f"{_num(doc.get('pointing_game_before'))}"
                )
            rows.append(
                f"<tr><td>{h(name)}</td><td>{h(method)}</td><td>{h(str(doc.get('target', '')))}</td>"
                f'<td class="num">{h(str(doc.get("n_scored", 0)))}</td>'
                f'<td class="num">{_num(doc.get("mean_energy_in_boxes"))}</td>'
                f'<td class="num">{_num(doc.get("pointing_game"))}</td><td>{h(before)}</td></tr>'
            )
            best, worst = best_and_worst(doc["images"], n_gallery)
            figs = []
            for tag, group in (("best", best), ("worst", worst)):
                for im in group:
                    b64 = _thumb(path.parent, im.get("overlay"))
                    if b64 is None:
                        notes.append(f"{path.parent}: overlay of {im.get('file_name')} missing — not shown")
                        continue
                    hit = "hit" if im.get("pointing_hit") else "miss"
                    cap = (
                        f"{tag}: {im.get('file_name')} · energy {_num(im.get('energy_in_boxes'), 2)} · {hit}"
                    )
                    figs.append(
                        f'<figure><img alt="{h(cap)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{h(cap)}</figcaption></figure>"
                    )
            if figs:
                galleries.append(
                    f"<h3>{h(name)} — {h(method)}: best- and worst-localised TB cases</h3>"
                    f'<div class="xg">{"".join(figs)}</div>'
                )
    if not rows and not notes:
        return ""
    out = [
        _STYLE,
        "<h2>Where the models look (tbx explain)</h2>",
        "<p>Energy in boxes: the heatmap's mass inside the union of an image's ground-truth TB boxes "
        "over its total; pointing game: the share of images whose heatmap maximum lies in a box "
        "(TB images with boxes).</p>",
    ]
    if rows:
        out += [
            "<table><thead><tr><th>Run</th><th>Method</th><th>Target</th><th>TB images</th>"
            "<th>Energy in boxes</th><th>Pointing game</th><th>Before the symmetric block</th></tr>"
            "</thead><tbody>",
            *rows,
            "</tbody></table>",
        ]
    out += galleries
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{h(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)
