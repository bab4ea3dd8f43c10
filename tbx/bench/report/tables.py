"""The report's tables as typed rows and cells (classification, complexity, detection,
screening, readers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tbx.bench import published as pub
from tbx.bench.classification import SENS_TARGET, SPEC_TARGET
from tbx.bench.report.config import CLS_COLUMNS, DAGGER, DET_CATS, DET_MODES, PUBLISHED_MARK
from tbx.bench.report.runs import Run, _as_interval, _group_label, _num


@dataclass
class Cell:
    """A table cell: a number (display units), optional CI / sd, or plain text."""

    value: float | None = None
    lo: float | None = None
    hi: float | None = None
    sd: float | None = None
    text: str | None = None
    digits: int = 1

    def fmt(self, v: float | None) -> str:
        return "" if v is None else f"{v:.{self.digits}f}"


@dataclass
class Row:
    labels: list[str]
    cells: list[Cell]
    kind: str = "ours"  # ours | folds | published | reader
    extra: dict[str, Any] = field(default_factory=dict)  # CSV-only columns


@dataclass
class Table:
    key: str
    title: str
    label_columns: list[str]
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None  # spanning header over `columns`
    footnotes: list[str] = field(default_factory=list)
    csv_columns: list[str] | None = None  # machine names of `columns`


def _pct(v: Any) -> float | None:
    v = _num(v)
    return None if v is None else 100.0 * v


def _pct_cell(value: Any, ci: tuple[float, float] | None = None) -> Cell:
    c = Cell(_pct(value))
    if ci is not None and c.value is not None:
        c.lo, c.hi = 100.0 * ci[0], 100.0 * ci[1]
    return c


def _mean_sd_cells(rows: list[list[Cell]]) -> list[Cell]:
    """Column-wise mean ± sample sd (ddof = 1) over fold rows (cells without a value ignored)."""
    out = []
    for cells in zip(*rows):
        vals = [c.value for c in cells if c.value is not None]
        digits = cells[0].digits
        if len(vals) >= 2:
            out.append(Cell(float(np.mean(vals)), sd=float(np.std(vals, ddof=1)), digits=digits))
        elif len(vals) == 1:
            out.append(Cell(vals[0], digits=digits))
        else:
            out.append(Cell(digits=digits))
    return out


def _add_fold_rows(
    table: Table, groups: list[list[Run]], cells_of: Any, prefix: list[str] | None = None
) -> None:
    for g in groups:
        per_run = [cells_of(r) for r in g]
        if not any(c.value is not None for cells in per_run for c in cells):
            continue
        table.rows.append(
            Row(
                (prefix or []) + [_group_label(g)],
                _mean_sd_cells(per_run),
                kind="folds",
                extra={"folds": ",".join(str(r.fold) for r in g)},
            )
        )


def _published_label(row_method: str) -> str:
    return f"{row_method} {PUBLISHED_MARK}{DAGGER}"


def _published_footnote(citations: set[str]) -> str:
    return (
        f"{DAGGER} {PUBLISHED_MARK}: numbers copied from "
        + "; ".join(sorted(citations))
        + " (not recomputed by tbx; different test data and hardware)."
    )


def classification_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    t = Table(
        "classification",
        "Image classification (%, [95% CI] where available)",
        ["Method"],
        [h for _, h in CLS_COLUMNS],
        csv_columns=[k for k, _ in CLS_COLUMNS],
    )

    def cells(r: Run) -> list[Cell]:
        return [_pct_cell(r.cls.get(k), r.ci("classification", k)) for k, _ in CLS_COLUMNS]

    for r in runs:
        if r.cls:
            t.rows.append(Row([r.label], cells(r), extra={"run": r.name, "model": r.model or ""}))
    _add_fold_rows(t, groups, cells)
    if reference:
        cites = set()
        for p in pub.PUBLISHED_ROWS:
            if p.classification:
                t.rows.append(
                    Row(
                        [_published_label(p.method)],
                        [Cell(p.classification.get(k)) for k, _ in CLS_COLUMNS],
                        kind="published",
                    )
                )
                cites.add(p.citation)
        t.footnotes.append(_published_footnote(cites))
    t.footnotes.append(
        "Acc: 3-class accuracy; AUC, Sens, Spec: TB vs non-TB; AP / AR: macro-averaged "
        "per-class precision / recall of the arg-max predictions (docs/protocol.md §4.2). Intervals: "
        "bootstrap percentile (tbx bench --bootstrap); AUC without bootstrap: DeLong."
    )
    return t


def complexity_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    cols = [
        ("gmacs", "GMACs", 2),
        ("params_live", "Params (M)", 2),
        ("params_paper", "Params, paper acct. (M)", 2),
        ("fps", "FPS", 1),
        ("f1", "F1", 1),
        ("tp", "TP", 1),
        ("tn", "TN", 1),
        ("fp", "FP", 1),
        ("fn", "FN", 1),
    ]
    t = Table(
        "complexity",
        "Complexity and TB-vs-non-TB outcome shares (% of all test images)",
        ["Method"],
        [h for _, h, _ in cols],
        csv_columns=[k for k, _, _ in cols],
    )

    def cells(r: Run) -> list[Cell]:
        info = r.model_info or {}
        c = r.cls
        counts = {k: _num(c.get(k)) for k in ("tp", "tn", "fp", "fn")}
        total = (
            sum(v for v in counts.values() if v is not None)
            if all(v is not None for v in counts.values())
            else None
        )
        out = []
        for k, _, d in cols:
            if k == "gmacs":
                v = _num(info.get("gmacs"))
            elif k in ("params_live", "params_paper"):
                v = _num(info.get(k))
                v = v / 1e6 if v is not None and v > 1e4 else v  # raw counts → millions
            elif k == "fps":
                v = _num(info.get("fps"))
                lat = _num(info.get("latency_ms"))
                if v is None and lat:  # tbx models info measures batch-1 latency
                    v = 1000.0 / lat
            elif k == "f1":
                v = _pct(c.get("f1"))
            else:
                v = 100.0 * counts[k] / total if total else None
            cell = Cell(v, digits=d)
            if k == "f1":
                ci = r.ci("classification", "f1")
                if ci and v is not None:
                    cell.lo, cell.hi = 100 * ci[0], 100 * ci[1]
            out.append(cell)
        return out

    for r in runs:
        if r.cls or r.model_info:
            t.rows.append(
                Row(
                    [r.label],
                    cells(r),
                    extra={
                        "run": r.name,
                        "model": r.model or "",
                        **{f"{k}_count": r.cls.get(k, "") for k in ("tp", "tn", "fp", "fn")},
                    },
                )
            )
    _add_fold_rows(t, groups, cells)
    if reference:
        cites = set()
        for p in pub.PUBLISHED_ROWS:
            if p.gmacs is None and p.fps is None:
                continue
            sh = p.shares or {}
            vals = [
                p.gmacs,
                None,
                p.params_paper_m,
                p.fps,
                p.f1,
                sh.get("tp"),
                sh.get("tn"),
                sh.get("fp"),
                sh.get("fn"),
            ]
            t.rows.append(
                Row(
                    [_published_label(p.method)],
                    [Cell(v, digits=d) for v, (_, _, d) in zip(vals, cols)],
                    kind="published",
                )
            )
            cites.add(p.citation)
        t.footnotes.append(
            _published_footnote(cites) + " Paper FPS measured on one TITAN XP; params / "
            "GMACs in the paper's mmcv accounting (docs/models.md §2.5); shares from docs/protocol.md §4.2."
        )
    t.footnotes.append(
        'GMACs at 512×512 (multiply-accumulates, the paper\'s "GFLOPs"); Params: live '
        "parameters, and the paper's accounting incl. dead parameters (docs/models.md §2.5); FPS: "
        "model_info.json's fps, else 1000 / latency_ms (batch 1, its device); "
        "TP/TN/FP/FN: TB vs non-TB, % of all images."
    )
    return t


def detection_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    cols, keys = [], []
    for cat, _ in DET_CATS:
        cols += ["AP50", "AP"]
        keys += [f"{cat}_ap50", f"{cat}_ap"]
    t = Table(
        "detection",
        "TB area detection (%, COCO AP50 and AP@[.50:.95])",
        ["Data", "Method"],
        cols,
        groups=[(h, 2) for _, h in DET_CATS],
        csv_columns=keys,
    )

    def cells_for(mode: str):
        def cells(r: Run) -> list[Cell]:
            out = []
            for cat, _ in DET_CATS:
                d = r.det(mode, cat)
                out += [
                    _pct_cell(d.get("ap50"), r.ci("detection", mode, cat, "ap50")),
                    _pct_cell(d.get("ap"), r.ci("detection", mode, cat, "ap")),
                ]
            return out

        return cells

    cites = set()
    for mode, mode_h in DET_MODES:
        cells = cells_for(mode)
        for r in runs:
            if r.has_mode(mode):
                t.rows.append(Row([mode_h, r.label], cells(r), extra={"run": r.name, "model": r.model or ""}))
        _add_fold_rows(t, groups, cells, prefix=[mode_h])
        if reference:
            for p in pub.PUBLISHED_ROWS:
                if any(m == mode for m, _ in p.detection):
                    vals = []
                    for cat, _ in DET_CATS:
                        ap50, ap = p.detection.get((mode, cat), (None, None))
                        vals += [Cell(ap50), Cell(ap)]
                    t.rows.append(Row([mode_h, _published_label(p.method)], vals, kind="published"))
                    cites.add(p.citation)
    if reference and cites:
        t.footnotes.append(_published_footnote(cites))
    t.footnotes.append(
        "ALL: every test CXR, boxes of images not classified as TB discarded; Only TB: TB "
        "images only (docs/protocol.md §4.3)."
    )
    return t


def operating_point(
    fpr: np.ndarray, tpr: np.ndarray, *, spec: float | None = None, sens: float | None = None
) -> tuple[float, float] | None:
    """A screening operating point on an ROC curve, as ``(sensitivity, specificity)``.

    ``spec=s``: the highest sensitivity among ROC points with specificity ≥ s.
    ``sens=s``: the highest specificity among ROC points with sensitivity ≥ s.
    """
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    if spec is not None:
        ok = (1.0 - fpr) >= spec - 1e-12
        if not ok.any():
            return None
        i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    else:
        ok = tpr >= sens - 1e-12
        if not ok.any():
            return None
        best = ok & (fpr <= fpr[ok].min() + 1e-15)
        i = np.flatnonzero(best)[np.argmax(tpr[best])]
    return float(tpr[i]), float(1.0 - fpr[i])


def _roc(r: Run) -> tuple[np.ndarray, np.ndarray] | None:
    roc = r.cls.get("roc")
    if not isinstance(roc, dict) or roc.get("fpr") is None or roc.get("tpr") is None:
        return None
    fpr, tpr = _floats(roc["fpr"]), _floats(roc["tpr"])
    if fpr.shape != tpr.shape or fpr.size < 2:
        return None
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    return (fpr[ok], tpr[ok]) if ok.sum() >= 2 else None


def _floats(v: Any) -> np.ndarray:
    """A float array from a JSON list (``null`` → NaN)."""
    if not isinstance(v, (list, tuple)):
        return np.zeros(0)
    return np.asarray([np.nan if _num_any(x) is None else _num_any(x) for x in v], float)


def _num_any(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def screening_points(r: Run) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """``((sens, spec) at spec ≥ .70, (sens, spec) at sens ≥ .90)``: the bench's exact
    ``operating_points`` when its targets are the screening ones, else read off the ROC arrays
    (which the bench may have downsampled)."""
    ops = r.bench.get("operating_points") or {}
    out: list[tuple[float, float] | None] = []
    for key, tkey, target in (
        ("sensitivity_at_specificity", "target_specificity", SPEC_TARGET),
        ("specificity_at_sensitivity", "target_sensitivity", SENS_TARGET),
    ):
        op = ops.get(key) if isinstance(ops, dict) else None
        se = _num(op.get("sensitivity")) if isinstance(op, dict) else None
        sp = _num(op.get("specificity")) if isinstance(op, dict) else None
        tgt = _num(op.get(tkey, target)) if isinstance(op, dict) else None
        if se is not None and sp is not None and tgt is not None and abs(tgt - target) < 1e-9:
            out.append((se, sp))
            continue
        roc = _roc(r)
        if roc is None:
            out.append(None)
        elif key == "sensitivity_at_specificity":
            out.append(operating_point(*roc, spec=target))
        else:
            out.append(operating_point(*roc, sens=target))
    return out[0], out[1]


def screening_table(runs: list[Run], groups: list[list[Run]]) -> Table:
    t = Table(
        "screening",
        "Screening operating points on the TB ROC curve (%)",
        ["Method"],
        ["Sens @ Spec 70", "Spec @ Sens 90"],
        csv_columns=["sens_at_spec70", "spec_at_sens90"],
    )

    def cells(r: Run) -> list[Cell]:
        a, b = screening_points(r)
        ca = Cell(100 * a[0] if a else None)
        cb = Cell(100 * b[1] if b else None)
        for cell, path in (
            (ca, ("operating_points", "sensitivity_at_specificity", "sensitivity")),
            (cb, ("operating_points", "specificity_at_sensitivity", "specificity")),
        ):
            ci = r.ci(*path)
            if ci and cell.value is not None:
                cell.lo, cell.hi = 100 * ci[0], 100 * ci[1]
        return [ca, cb]

    for r in runs:
        if any(p is not None for p in screening_points(r)):
            t.rows.append(Row([r.label], cells(r), extra={"run": r.name, "model": r.model or ""}))
    _add_fold_rows(t, groups, cells)
    t.footnotes.append(
        "Sens @ Spec 70: highest sensitivity with specificity ≥ 70 %; Spec @ Sens 90: "
        "highest specificity with sensitivity ≥ 90 % (thresholds of the empirical ROC "
        "curve)."
    )
    return t


def _study_model_label(s: dict[str, Any]) -> str:
    n = s.get("n_cases")
    return f"model on the study's {n} cases" if n else "model on the study's cases"


def reader_table(runs: list[Run], study: dict[str, Any] | None, reference: bool) -> Table:
    """Readers of ``tbx study compare`` (with their bootstrap CIs) and, when the comparison scored a
    model on the same cases, that model's row; the published radiologist with ``--reference paper``."""
    t = Table(
        "readers",
        "Reader study (%, on the study's cases)",
        ["Reader"],
        ["Acc (3-class)", "Acc (TB types)", "Sens", "Spec"],
        csv_columns=["accuracy_3class", "accuracy_types", "sensitivity", "specificity"],
    )
    seen = set()
    studies = ([study] if study else []) + [r.study for r in runs if r.study]

    def cells(d: dict[str, Any]) -> list[Cell]:
        ci = d.get("ci") if isinstance(d.get("ci"), dict) else {}
        return [_pct_cell(d.get(k), _as_interval(ci.get(k))) for k in t.csv_columns]

    for s in studies:
        rows = [
            (str(rd.get("name", "reader")), rd, "reader")
            for rd in s.get("readers", [])
            if isinstance(rd, dict)
        ]
        if isinstance(s.get("model"), dict):
            rows.append((_study_model_label(s), s["model"], "ours"))
        for name, d, kind in rows:
            key = (name, tuple(d.get(k) for k in t.csv_columns))
            if key in seen:
                continue
            seen.add(key)
            t.rows.append(Row([name], cells(d), kind=kind))
    if reference:
        p = pub.PUBLISHED_RADIOLOGIST
        cells_p = [Cell(p["accuracy_3class"]), Cell(p["accuracy_types"]), Cell(), Cell()]
        t.rows.append(Row([_published_label(p["name"])], cells_p, kind="published"))
        t.footnotes.append(
            _published_footnote({p["citation"]})
            + " One radiologist on 400 test images (docs/dataset.md §1.5)."
        )
    t.footnotes.append(
        "Acc (TB types): a TB case counts as right only with the right set of TB types; "
        "a model has no TB type. Intervals: bootstrap over cases."
    )
    return t
