"""``tbx report``: the paper's tables and figures from one or many run directories.

The report reads **only the files of the run directories** (ARCHITECTURE.md "Runs"), so it works on
runs made on another machine.  Everything that is missing in a run is skipped with a note (listed in
the report and in :attr:`ReportResult.notes`), never a crash.

Run directory contract
======================
``runs/<name>/`` may hold (all optional, but a run needs ``config.yaml`` or ``bench/``):

``config.yaml``
    The training config.  The model name is read leniently from ``model_name`` (tbx train),
    ``model.name``, ``model.arch``, a top-level ``model: NAME`` string, or else
    ``predictions/manifest.json``'s ``model``, or else ``model_info.json``'s ``name``.  The fold
    index is ``data.fold`` (or top-level ``fold``), or a run-directory name ending in ``_fold{k}``.
``provenance.json``
    Shown verbatim in ``report.html`` (commit, versions, data hash when present).
``metrics.jsonl``
    One JSON object per line: ``iteration``, ``epoch``, ``stage``, loss terms (keys starting with
    ``loss``), ``lr``, … ; rows with a ``kind`` other than ``train`` (``val``, ``stage_end``) are not
    plotted.  When ``iteration`` restarts with a new stage, the curves continue on a global step
    axis.  A truncated last line (run still writing) is skipped with a note.
``predictions/``
    ``cls_result.txt`` (SPEC §4.1, one ``p(healthy) p(sick) p(TB)`` line per image in the order of
    the annotation file's ``images``), ``bbox_result.json`` (COCO results), ``manifest.json`` with at
    least ``ann`` (or ``annotations``: the annotation JSON used for prediction) and ``model``;
    ``data_root`` when present locates the images, else the root is the parent of
    ``annotations/json/``.
``bench/*.json``
    Output of ``tbx bench --json`` (all fractions in [0, 1])::

        classification: accuracy auc sensitivity specificity ap ar f1 confusion (3×3, rows = truth
                        healthy/sick/TB) tp tn fp fn roc: {fpr, tpr, thresholds}
                        auc_delong: {ci} (optional)
        detection: {all_cxr, tb_only}: {agnostic, active, latent}:
                   ap ap50 ar100 froc froc_curve? pr: {recall?, iou50: [101 precisions], iou75: [...]}
                   error_analysis (or analysis): {C75, C50, Loc, Sim?, Oth?, BG, FN}
        operating_points: {sensitivity_at_specificity: {target_specificity, sensitivity, specificity},
                           specificity_at_sensitivity: {target_sensitivity, specificity, sensitivity}}
        ci: same paths as above, each value [lo, hi] (or {lo, hi}) — 95 % bootstrap intervals

    ``bench/provenance.json`` and JSONs without a classification/detection block (e.g. ``tbx bench
    compare`` output) are ignored with a note; the bench's own ``notes`` are carried over.
    The screening points (sensitivity at specificity ≥ .70, specificity at sensitivity ≥ .90) are
    taken from ``operating_points`` when its targets are these, else read off the ROC arrays.

    Several bench files are merged key by key in file-name order; a disagreement is noted and the
    later file wins.  ``froc`` is ``{fppi: [...], sensitivity: [...]}`` (aliases accepted: ``fps``,
    ``fp_per_image`` / ``sens``, ``recall``) or a list of ``[fppi, sensitivity]`` pairs.
    ``error_analysis`` values are 101-point precision arrays (drawn as the stacked areas of the COCO
    analyze figure), ``{ap, precision}`` objects, or AP scalars (drawn as a stacked bar).
``model_info.json``
    ``tbx models info --json``: ``params_live``, ``params_paper``, ``gmacs``, optional ``fps``.
``study_compare.json``
    ``tbx study compare`` output (``readers[].{name, accuracy_types, accuracy_3class, sensitivity,
    specificity}``), in the run directory, in ``<run>/study/``, or given by ``--study DIR``.

Folds: runs whose configs are equal once the fold index and output/name keys are removed form a
k-fold group and get an extra "mean ± sd" row (sample standard deviation, ddof = 1).

Outputs (all written into a temporary directory moved into place at the end; an existing OUT is
replaced only when it is empty or an earlier report):
``tables/<name>.{md,tex,csv}``, ``report.md``, ``report.html`` (self-contained, figures as base64
PNG), ``figures/*.{png,pdf}``, ``notes.txt`` and ``provenance.json``.

Overlay selection (``--overlays N``, per run with predictions and a reachable dataset): among TB
images with ground-truth boxes, each image gets the score *q* = mean over its ground-truth boxes of
the best IoU with a prediction whose score ≥ 0.3; the *best* are the highest q, the *worst* the
lowest q (ties: more ground-truth boxes first); the *most uncertain* are the images whose p(TB)
(``cls_result.txt``) is closest to 0.5.  N is split evenly over the three groups (at least one each).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from tbx.bench import published as pub
from tbx.errors import TbxError, where
from tbx.io import atomic_dir, atomic_write_text, check_replaceable
from tbx.provenance import write_provenance

FORMATS = ("md", "tex", "csv", "html")
CLS_COLUMNS = (("accuracy", "Acc"), ("auc", "AUC (TB)"), ("sensitivity", "Sens"),
               ("specificity", "Spec"), ("ap", "AP"), ("ar", "AR"))
DET_MODES = (("all_cxr", "ALL"), ("tb_only", "Only TB"))
DET_CATS = (("agnostic", "Category-agnostic TB"), ("active", "Active TB"), ("latent", "Latent TB"))
SCREENING = {"spec": 0.70, "sens": 0.90}  # screening operating points (sens @ spec .70, spec @ sens .90)
OVERLAY_SCORE_THR = 0.3
PUBLISHED_MARK = "(published)"
DAGGER = "†"
_CONFIG_IGNORE = {"name", "run_name", "out", "out_dir", "output", "output_dir", "run_dir", "work_dir",
                  "fold"}
_MODE_ALIASES = {"all": "all_cxr", "all-cxr": "all_cxr", "allcxr": "all_cxr", "tb-only": "tb_only",
                 "only_tb": "tb_only", "tbonly": "tb_only"}
_CAT_ALIASES = {"category_agnostic": "agnostic", "ca": "agnostic", "tb": "agnostic", "all": "agnostic"}


# ----------------------------------------------------------------------------------------- configs
@dataclass
class ReportConfig:
    """Options of ``tbx report``."""

    formats: tuple[str, ...] = FORMATS
    reference: Literal["paper", "none"] = "paper"
    study: Path | None = None  # a directory holding study_compare.json, or the file itself
    overlays: int = 6  # total number of overlay images per run (0 = none)
    figures: bool = True
    dpi: int = 150

    def __post_init__(self) -> None:
        if isinstance(self.formats, str):
            self.formats = tuple(f.strip() for f in self.formats.split(",") if f.strip())
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise TbxError(f"unknown report format '{bad[0] if bad else ''}'",
                           fix=f"use a comma-separated subset of {','.join(FORMATS)}")
        if self.reference not in ("paper", "none"):
            raise TbxError(f"bad --reference '{self.reference}'", fix="use 'paper' or 'none'")
        if self.overlays < 0:
            raise TbxError("--overlays must be ≥ 0")


@dataclass
class ReportResult:
    """Paths of everything a report wrote (final locations under ``out``)."""

    out: Path
    tables: dict[str, list[Path]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    markdown: Path | None = None
    html: Path | None = None
    notes_file: Path | None = None
    provenance: Path | None = None
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        out = [p for paths in self.tables.values() for p in paths] + list(self.figures)
        out += [p for p in (self.markdown, self.html, self.notes_file, self.provenance) if p]
        return out


# -------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """Everything ``tbx report`` reads from one run directory."""

    name: str
    path: Path
    config: dict[str, Any]
    model: str | None
    fold: int | None
    provenance: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    bench: dict[str, Any]
    manifest: dict[str, Any] | None
    model_info: dict[str, Any] | None
    study: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Row label: the run name, with the model appended when the name does not mention it."""
        if self.model and self.model.lower() not in self.name.lower():
            return f"{self.name} ({self.model})"
        return self.name

    @property
    def cls(self) -> dict[str, Any]:
        c = self.bench.get("classification")
        return c if isinstance(c, dict) else {}

    def det(self, mode: str, cat: str) -> dict[str, Any]:
        d = _get(self.bench, ("detection", mode, cat))
        return d if isinstance(d, dict) else {}

    def has_mode(self, mode: str) -> bool:
        d = _get(self.bench, ("detection", mode))
        return isinstance(d, dict) and bool(d)

    def ci(self, *path: str) -> tuple[float, float] | None:
        iv = _as_interval(_get(self.bench.get("ci") or {}, path))
        if iv is None and tuple(path) == ("classification", "auc"):  # DeLong interval of tbx bench
            iv = _as_interval(_get(self.bench, ("classification", "auc_delong", "ci")))
        return iv


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TbxError(f"invalid JSON: {e.msg}", where(path, e.lineno),
                       "regenerate the file (or remove it from the run directory)") from None
    except OSError as e:
        raise TbxError(f"cannot read file: {e.strerror}", path) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TbxError(f"invalid YAML: {getattr(e, 'problem', e)}",
                       where(path, mark.line + 1 if mark else None), "fix the syntax") from None
    if not isinstance(data, dict):
        raise TbxError("config.yaml must be a YAML mapping", path)
    return data


def _get(d: Any, path: tuple[str, ...] | list[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(v: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / COCO's -1 ("no ground truth")."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if not math.isfinite(v) or v < 0:
        return None
    return v


def _as_interval(v: Any) -> tuple[float, float] | None:
    if isinstance(v, dict):
        lo = v.get("lo", v.get("low", v.get("lower")))
        hi = v.get("hi", v.get("high", v.get("upper")))
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        lo, hi = v
    else:
        return None
    lo, hi = _num(lo), _num(hi)
    return (lo, hi) if lo is not None and hi is not None else None


def _merge(base: dict[str, Any], new: dict[str, Any], src: str, notes: list[str], prefix: str = "") -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, src, notes, f"{prefix}{k}.")
        else:
            if k in base and base[k] != v and not isinstance(v, list):
                notes.append(f"bench files disagree on {prefix}{k}; using {src}")
            base[k] = v


def _normalise_bench(b: dict[str, Any]) -> dict[str, Any]:
    """Accept ``all-cxr``/``tb-only`` and ``category_agnostic`` spellings of the contract keys."""
    def fix_det(det: Any) -> Any:
        if not isinstance(det, dict):
            return det
        out = {}
        for mode, cats in det.items():
            m = _MODE_ALIASES.get(str(mode).lower(), str(mode).lower().replace("-", "_"))
            if isinstance(cats, dict):
                cats = {_CAT_ALIASES.get(str(c).lower(), str(c).lower()): v for c, v in cats.items()}
            out[m] = cats
        return out

    b = dict(b)
    if "detection" in b:
        b["detection"] = fix_det(b["detection"])
    if isinstance(b.get("ci"), dict) and "detection" in b["ci"]:
        b["ci"] = dict(b["ci"])
        b["ci"]["detection"] = fix_det(b["ci"]["detection"])
    return b


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                notes.append(f"{path}:{i}: truncated last line skipped (run still writing?)")
                continue
            raise TbxError(f"invalid JSON line: {e.msg}", where(path, i),
                           "each line of metrics.jsonl must be one JSON object") from None
        if not isinstance(row, dict):
            raise TbxError("metrics line is not a JSON object", where(path, i))
        rows.append(row)
    return rows


def _find_study(run_dir: Path) -> Path | None:
    for p in (run_dir / "study_compare.json", run_dir / "study" / "study_compare.json"):
        if p.is_file():
            return p
    return None


def study_file(path: Path) -> Path:
    """``--study DIR`` → ``DIR/study_compare.json`` (or the file itself)."""
    path = Path(path)
    p = path if path.is_file() else path / "study_compare.json"
    if not p.is_file():
        raise TbxError("no study_compare.json found", path,
                       "pass the output directory of `tbx study compare` (or the JSON file)")
    return p


def _check_study(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("readers", []), list):
        raise TbxError("study comparison must be a JSON object with a 'readers' list", path)
    return data


def load_run(path: str | Path) -> Run:
    """Read one run directory (see the module docstring for the contract)."""
    path = Path(path)
    if not path.is_dir():
        raise TbxError("run directory not found", path, "give directories such as runs/<name>")
    has_cfg = (path / "config.yaml").is_file()
    bench_dir = path / "bench"
    if not has_cfg and not bench_dir.is_dir():
        raise TbxError("not a run directory (no config.yaml and no bench/)", path,
                       "give a directory written by `tbx train` (runs/<name>) or one holding "
                       "bench/*.json from `tbx bench --json`")
    notes: list[str] = []
    name = path.resolve().name
    config = _read_yaml(path / "config.yaml") if has_cfg else {}
    if not has_cfg:
        notes.append(f"{name}: no config.yaml (model name and fold taken from other files)")

    prov = _read_json(path / "provenance.json") if (path / "provenance.json").is_file() else None
    metrics = _read_metrics(path / "metrics.jsonl", notes) if (path / "metrics.jsonl").is_file() else []

    bench: dict[str, Any] = {}
    files = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    files = [f for f in files if not f.name.endswith("provenance.json")]  # written beside by tbx bench
    n_used = 0
    for f in files:
        data = _read_json(f)
        if not isinstance(data, dict):
            raise TbxError("bench JSON must be an object", f, "use the output of `tbx bench --json`")
        if "classification" not in data and "detection" not in data:
            notes.append(f"{name}: bench/{f.name} has no classification/detection block — ignored "
                         "(a `tbx bench compare` output?)")
            continue
        n_used += 1
        for bn in data.get("notes") or []:
            notes.append(f"{name}: bench/{f.name}: {bn}")
        data = {k: v for k, v in data.items() if k not in ("notes", "config", "pred", "schema")}
        merge_notes: list[str] = []
        _merge(bench, _normalise_bench(data), f.name, merge_notes)
        notes += [f"{name}: {n}" for n in merge_notes]
    if not n_used:
        notes.append(f"{name}: no bench/*.json — no metrics for this run")

    pred = path / "predictions"
    manifest = None
    if (pred / "manifest.json").is_file():
        manifest = _read_json(pred / "manifest.json")
        if not isinstance(manifest, dict):
            raise TbxError("predictions/manifest.json must be a JSON object", pred / "manifest.json")
    info = _read_json(path / "model_info.json") if (path / "model_info.json").is_file() else None
    sf = _find_study(path)
    study = _check_study(_read_json(sf), sf) if sf else None

    model = config.get("model_name")  # tbx train's TrainConfig
    m = config.get("model")
    if not model and isinstance(m, dict):
        model = m.get("name") or m.get("arch")
    elif not model and isinstance(m, str):
        model = m
    if not model and manifest:
        model = manifest.get("model") if isinstance(manifest.get("model"), str) else None
    if not model and isinstance(info, dict):
        model = info.get("name") or info.get("model")
    fold = _get(config, ("data", "fold"))
    if fold is None:
        fold = config.get("fold")
    if fold is None:
        mm = re.search(r"_fold(\d+)$", name)
        fold = int(mm.group(1)) if mm else None
    try:
        fold = int(fold) if fold is not None else None
    except (TypeError, ValueError):
        raise TbxError(f"bad fold index {fold!r} in config.yaml", path / "config.yaml",
                       "data.fold must be an integer") from None
    return Run(name=name, path=path, config=config, model=str(model) if model else None, fold=fold,
               provenance=prov if isinstance(prov, dict) else None, metrics=metrics, bench=bench,
               manifest=manifest, model_info=info if isinstance(info, dict) else None, study=study,
               notes=notes)


def _unfold(v: Any) -> Any:
    """Mask fold indices inside strings (per-fold annotation paths such as ``folds/fold3/…``)."""
    if isinstance(v, dict):
        return {k: _unfold(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unfold(x) for x in v]
    if isinstance(v, str):
        return re.sub(r"fold[_-]?\d+", "fold*", v)
    return v


def _fold_key(run: Run) -> str:
    cfg = {k: v for k, v in run.config.items() if k not in _CONFIG_IGNORE}
    if isinstance(cfg.get("data"), dict):
        cfg["data"] = {k: v for k, v in cfg["data"].items() if k != "fold"}
    cfg = _unfold(cfg)
    base = re.sub(r"_fold\d+$", "", run.name) if not run.config else ""
    return json.dumps({"cfg": cfg, "name": base, "model": run.model}, sort_keys=True, default=str)


def fold_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups (≥ 2 runs, distinct folds) of runs sharing a config except the fold index."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.fold is not None:
            groups.setdefault(_fold_key(r), []).append(r)
    out = []
    for g in groups.values():
        if len(g) >= 2 and len({r.fold for r in g}) == len(g):
            out.append(sorted(g, key=lambda r: r.fold))
    return out


def _group_label(g: list[Run]) -> str:
    base = re.sub(r"_fold\d+$", "", g[0].name)
    if g[0].model and g[0].model.lower() not in base.lower():
        base = f"{base} ({g[0].model})"
    return f"{base}: {len(g)}-fold mean ± sd"


# ------------------------------------------------------------------------------------------ tables
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


def _add_fold_rows(table: Table, groups: list[list[Run]], cells_of: Any,
                   prefix: list[str] | None = None) -> None:
    for g in groups:
        per_run = [cells_of(r) for r in g]
        if not any(c.value is not None for cells in per_run for c in cells):
            continue
        table.rows.append(Row((prefix or []) + [_group_label(g)], _mean_sd_cells(per_run), kind="folds",
                              extra={"folds": ",".join(str(r.fold) for r in g)}))


def _published_label(row_method: str) -> str:
    return f"{row_method} {PUBLISHED_MARK}{DAGGER}"


def _published_footnote(citations: set[str]) -> str:
    return (f"{DAGGER} {PUBLISHED_MARK}: numbers copied from " + "; ".join(sorted(citations))
            + " (not recomputed by tbx; different test data and hardware).")


def classification_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    t = Table("classification", "Image classification (%, [95% CI] where available)", ["Method"],
              [h for _, h in CLS_COLUMNS], csv_columns=[k for k, _ in CLS_COLUMNS])

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
                t.rows.append(Row([_published_label(p.method)],
                                  [Cell(p.classification.get(k)) for k, _ in CLS_COLUMNS], kind="published"))
                cites.add(p.citation)
        t.footnotes.append(_published_footnote(cites))
    t.footnotes.append("Acc: 3-class accuracy; AUC, Sens, Spec: TB vs non-TB; AP / AR: macro-averaged "
                       "per-class precision / recall of the arg-max predictions (SPEC §4.2). Intervals: "
                       "bootstrap percentile (tbx bench --bootstrap); AUC without bootstrap: DeLong.")
    return t


def complexity_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    cols = [("gmacs", "GMACs", 2), ("params_live", "Params (M)", 2),
            ("params_paper", "Params, paper acct. (M)", 2),
            ("fps", "FPS", 1), ("f1", "F1", 1), ("tp", "TP", 1), ("tn", "TN", 1), ("fp", "FP", 1),
            ("fn", "FN", 1)]
    t = Table("complexity", "Complexity and TB-vs-non-TB outcome shares (% of all test images)", ["Method"],
              [h for _, h, _ in cols], csv_columns=[k for k, _, _ in cols])

    def cells(r: Run) -> list[Cell]:
        info = r.model_info or {}
        c = r.cls
        counts = {k: _num(c.get(k)) for k in ("tp", "tn", "fp", "fn")}
        total = sum(v for v in counts.values() if v is not None) if all(
            v is not None for v in counts.values()) else None
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
            t.rows.append(Row([r.label], cells(r), extra={
                "run": r.name, "model": r.model or "",
                **{f"{k}_count": r.cls.get(k, "") for k in ("tp", "tn", "fp", "fn")}}))
    _add_fold_rows(t, groups, cells)
    if reference:
        cites = set()
        for p in pub.PUBLISHED_ROWS:
            if p.gmacs is None and p.fps is None:
                continue
            sh = p.shares or {}
            vals = [p.gmacs, None, p.params_paper_m, p.fps, p.f1, sh.get("tp"), sh.get("tn"), sh.get("fp"),
                    sh.get("fn")]
            t.rows.append(Row([_published_label(p.method)],
                              [Cell(v, digits=d) for v, (_, _, d) in zip(vals, cols)], kind="published"))
            cites.add(p.citation)
        t.footnotes.append(_published_footnote(cites) + " Paper FPS measured on one TITAN XP; params / "
                           "GMACs in the paper's mmcv accounting (SPEC §2.5); shares from SPEC §4.2.")
    t.footnotes.append("GMACs at 512×512 (multiply-accumulates, the paper's \"GFLOPs\"); Params: live "
                       "parameters, and the paper's accounting incl. dead parameters (SPEC §2.5); FPS: "
                       "model_info.json's fps, else 1000 / latency_ms (batch 1, its device); "
                       "TP/TN/FP/FN: TB vs non-TB, % of all images.")
    return t


def detection_table(runs: list[Run], groups: list[list[Run]], reference: bool) -> Table:
    cols, keys = [], []
    for cat, _ in DET_CATS:
        cols += ["AP50", "AP"]
        keys += [f"{cat}_ap50", f"{cat}_ap"]
    t = Table("detection", "TB area detection (%, COCO AP50 and AP@[.50:.95])", ["Data", "Method"], cols,
              groups=[(h, 2) for _, h in DET_CATS], csv_columns=keys)

    def cells_for(mode: str):
        def cells(r: Run) -> list[Cell]:
            out = []
            for cat, _ in DET_CATS:
                d = r.det(mode, cat)
                out += [_pct_cell(d.get("ap50"), r.ci("detection", mode, cat, "ap50")),
                        _pct_cell(d.get("ap"), r.ci("detection", mode, cat, "ap"))]
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
    t.footnotes.append("ALL: every test CXR, boxes of images not classified as TB discarded; Only TB: TB "
                       "images only (SPEC §4.3).")
    return t


def operating_point(fpr: np.ndarray, tpr: np.ndarray, *, spec: float | None = None,
                    sens: float | None = None) -> tuple[float, float] | None:
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
    for key, tkey, target in (("sensitivity_at_specificity", "target_specificity", SCREENING["spec"]),
                              ("specificity_at_sensitivity", "target_sensitivity", SCREENING["sens"])):
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
    t = Table("screening", "Screening operating points on the TB ROC curve (%)", ["Method"],
              ["Sens @ Spec 70", "Spec @ Sens 90"], csv_columns=["sens_at_spec70", "spec_at_sens90"])

    def cells(r: Run) -> list[Cell]:
        a, b = screening_points(r)
        ca = Cell(100 * a[0] if a else None)
        cb = Cell(100 * b[1] if b else None)
        for cell, path in ((ca, ("operating_points", "sensitivity_at_specificity", "sensitivity")),
                           (cb, ("operating_points", "specificity_at_sensitivity", "specificity"))):
            ci = r.ci(*path)
            if ci and cell.value is not None:
                cell.lo, cell.hi = 100 * ci[0], 100 * ci[1]
        return [ca, cb]

    for r in runs:
        if any(p is not None for p in screening_points(r)):
            t.rows.append(Row([r.label], cells(r), extra={"run": r.name, "model": r.model or ""}))
    _add_fold_rows(t, groups, cells)
    t.footnotes.append("Sens @ Spec 70: highest sensitivity with specificity ≥ 70 %; Spec @ Sens 90: "
                       "highest specificity with sensitivity ≥ 90 % (thresholds of the empirical ROC "
                       "curve).")
    return t


def _study_model_label(s: dict[str, Any]) -> str:
    n = s.get("n_cases")
    return f"model on the study's {n} cases" if n else "model on the study's cases"


def reader_table(runs: list[Run], study: dict[str, Any] | None, reference: bool) -> Table:
    """Readers of ``tbx study compare`` (with their bootstrap CIs) and, when the comparison scored a
    model on the same cases, that model's row; the published radiologist with ``--reference paper``."""
    t = Table("readers", "Reader study (%, on the study's cases)", ["Reader"],
              ["Acc (3-class)", "Acc (TB types)", "Sens", "Spec"],
              csv_columns=["accuracy_3class", "accuracy_types", "sensitivity", "specificity"])
    seen = set()
    studies = ([study] if study else []) + [r.study for r in runs if r.study]

    def cells(d: dict[str, Any]) -> list[Cell]:
        ci = d.get("ci") if isinstance(d.get("ci"), dict) else {}
        return [_pct_cell(d.get(k), _as_interval(ci.get(k))) for k in t.csv_columns]

    for s in studies:
        rows = [(str(rd.get("name", "reader")), rd, "reader") for rd in s.get("readers", [])
                if isinstance(rd, dict)]
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
        t.footnotes.append(_published_footnote({p["citation"]})
                           + " One radiologist on 400 test images (SPEC §1.5).")
    t.footnotes.append("Acc (TB types): a TB case counts as right only with the right set of TB types; "
                       "a model has no TB type. Intervals: bootstrap over cases.")
    return t


# ------------------------------------------------------------------------------------- rendering
_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNI = {"†": r"\textsuperscript{\dag}", "±": r"$\pm$", "≥": r"$\geq$", "×": r"$\times$",
            "–": "--", "—": "---", "≤": r"$\leq$", "§": r"\S{}", "→": r"$\rightarrow$",
            "·": r"$\cdot$"}


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
            head += [f"{g} {c}" for c in t.columns[i:i + n]]
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
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + tex_escape(t.title) + "}", r"\label{tab:tbx-" + t.key + "}",
           r"\begin{tabular}{" + spec + "}", r"\toprule"]
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
        out.append(" & ".join([tex_escape(x) for x in r.labels] + [_cell_text(c, "tex") for c in r.cells])
                   + r" \\")
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
        names = [f"{g}_{c}" for (g, n), i in zip(t.groups, range(len(t.groups))) for c in t.columns[i:i + n]]
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
        parts.append("<tr>" + "".join("<th></th>" for _ in t.label_columns)
                     + "".join(f'<th colspan="{n}">{h(g)}</th>' for g, n in t.groups) + "</tr>")
    parts.append("<tr>" + "".join(f"<th>{h(c)}</th>" for c in t.label_columns + t.columns) + "</tr>")
    parts.append("</thead><tbody>")
    for r in t.rows:
        cls = f' class="{r.kind}"'
        parts.append(f"<tr{cls}>" + "".join(f"<td>{h(x)}</td>" for x in r.labels)
                     + "".join(f'<td class="num">{h(_cell_text(c, "html"))}</td>' for c in r.cells) + "</tr>")
    parts.append("</tbody></table>")
    parts += [f'<p class="fn">{h(fn)}</p>' for fn in t.footnotes]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ figures
def _global_steps(rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """x axis for training curves: ``iteration`` continued across stages when it restarts, plus the
    stage boundaries ``(x, new stage)``."""
    xs, bounds = [], []
    offset, last_it, last_stage = 0.0, None, None
    for i, r in enumerate(rows):
        it = _num(r.get("iteration", r.get("iter", r.get("step"))))
        it = float(i) if it is None else it
        stage = r.get("stage")
        if last_stage is not None and stage != last_stage:
            if last_it is not None and it + offset <= last_it:
                offset = last_it + 1 - it
            bounds.append((it + offset, str(stage)))
        x = it + offset
        xs.append(x)
        last_it, last_stage = x, stage
    return np.asarray(xs, float), bounds


def _figures_for_runs(runs: list[Run], cfg: ReportConfig, study: dict[str, Any] | None, fig_dir: Path,
                      notes: list[str]) -> list[tuple[str, list[Path]]]:
    """Draw every figure the runs allow; returns ``[(caption, [png, pdf]), ...]``."""
    from tbx.bench import plots

    figs: list[tuple[str, list[Path]]] = []

    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-") or "run"

    def add(caption: str, draw: Any, *args: Any) -> None:
        # Malformed arrays in a hand-made JSON cost one figure (with a note), never the report.
        try:
            figs.append((caption, draw(*args)))
        except (ValueError, TypeError, IndexError, KeyError) as e:
            notes.append(f"figure '{caption}' skipped: malformed data ({type(e).__name__}: {e})")

    # Confusion matrices (one per run).
    for r in runs:
        cm = r.cls.get("confusion")
        if cm is None:
            if r.cls:
                notes.append(f"{r.name}: no classification.confusion in bench JSON — "
                             "confusion matrix skipped")
            continue
        try:
            cm = np.asarray(cm, float)
        except (TypeError, ValueError):
            cm = np.zeros(0)
        if cm.shape != (3, 3):
            notes.append(f"{r.name}: classification.confusion is not 3×3 — confusion matrix skipped")
            continue
        add(f"Confusion matrix — {r.label}", plots.confusion_figure, cm, r.label,
            fig_dir / f"confusion_{safe(r.name)}", cfg.dpi)

    # ROC with screening points and readers.
    curves = []
    for r in runs:
        roc = _roc(r)
        if roc is None:
            if r.cls:
                notes.append(f"{r.name}: no classification.roc arrays — not in the ROC figure")
            continue
        pts = {}
        a, b = screening_points(r)
        if a:
            pts["sens @ spec .70"] = a
        if b:
            pts["spec @ sens .90"] = b
        curves.append(plots.RocCurve(r.label, roc[0], roc[1], _num(r.cls.get("auc")), pts))
    readers = []
    for s in ([study] if study else []) + [r.study for r in runs if r.study]:
        for rd in s.get("readers", []):
            if not isinstance(rd, dict):
                continue
            se, sp = _num(rd.get("sensitivity")), _num(rd.get("specificity"))
            if se is not None and sp is not None:
                p = (str(rd.get("name", "reader")), se, sp)
                if p not in readers:
                    readers.append(p)
    for s in ([study] if study else []) + [r.study for r in runs if r.study]:
        m = s.get("model") if isinstance(s.get("model"), dict) else None
        roc = m.get("roc") if m else None
        if isinstance(roc, dict):
            fpr, tpr = _floats(roc.get("fpr")), _floats(roc.get("tpr"))
            label = _study_model_label(s)
            if fpr.size >= 2 and fpr.shape == tpr.shape and not any(c.label == label for c in curves):
                curves.append(plots.RocCurve(label, fpr, tpr, _num(m.get("auc"))))
    if curves:
        add("ROC of TB vs non-TB", plots.roc_figure, curves, readers, fig_dir / "roc_tb", cfg.dpi)

    # Detection: PR per category at IoU .5/.75, error analysis, FROC.
    for mode, mode_h in DET_MODES:
        froc_curves: dict[str, list[Any]] = {}
        for r in runs:
            if not r.has_mode(mode):
                continue
            pr = {cat: r.det(mode, cat).get("pr") for cat, _ in DET_CATS}
            pr = {c: v for c, v in pr.items() if isinstance(v, dict) and (v.get("iou50") or v.get("iou75"))}
            pr = {c: {k: (_floats(x) if isinstance(x, list) else None) for k, x in v.items()}
                  for c, v in pr.items()}
            if pr:
                add(f"Precision–recall, {mode_h} — {r.label}", plots.pr_figure, pr,
                    [h for _, h in DET_CATS], [c for c, _ in DET_CATS], f"{r.label} — {mode_h}",
                    fig_dir / f"pr_{mode}_{safe(r.name)}", cfg.dpi)
            else:
                notes.append(f"{r.name}: no detection.{mode}.*.pr arrays — PR figure skipped")
            ea = {cat: _error_curves(r.det(mode, cat)) for cat, _ in DET_CATS}
            ea = {c: v for c, v in ea.items() if v}
            if ea:
                add(f"COCO error analysis, {mode_h} — {r.label}", plots.error_analysis_figure, ea,
                    dict(DET_CATS), f"{r.label} — {mode_h}", fig_dir / f"errors_{mode}_{safe(r.name)}",
                    cfg.dpi)
            else:
                notes.append(f"{r.name}: no detection.{mode}.*.error_analysis — "
                             "error-analysis figure skipped")
            for cat, _ in DET_CATS:
                d = r.det(mode, cat)
                pts = plots.parse_froc(d.get("froc"))
                curve = plots.parse_froc(d.get("froc_curve")) or pts  # full curve when the bench gives it
                if curve is not None:
                    froc_curves.setdefault(cat, []).append(plots.FrocCurve(
                        r.label, curve[0], curve[1], pts if curve is not pts else None))
        if froc_curves:
            add(f"FROC, {mode_h}", plots.froc_figure, froc_curves, dict(DET_CATS), mode_h,
                fig_dir / f"froc_{mode}", cfg.dpi)
        elif any(r.has_mode(mode) for r in runs):
            notes.append(f"no detection.{mode}.*.froc in any run — FROC figure skipped")

    # Training curves.
    for r in runs:
        if not r.metrics:
            notes.append(f"{r.name}: no metrics.jsonl — training curves skipped")
            continue
        rows = [row for row in r.metrics if row.get("kind", "train") == "train"]
        if not rows:
            notes.append(f"{r.name}: metrics.jsonl has no training rows — training curves skipped")
            continue
        x, bounds = _global_steps(rows)
        keys = []
        for row in rows:
            for k, v in row.items():
                if k.startswith("loss") and _num_any(v) is not None and k not in keys:
                    keys.append(k)
        losses = {k: _floats([row.get(k) for row in rows]) for k in keys}
        lr = _floats([row.get("lr") for row in rows])
        if not keys and np.all(np.isnan(lr)):
            notes.append(f"{r.name}: metrics.jsonl has no loss*/lr values — training curves skipped")
            continue
        add(f"Training curves — {r.label}", plots.training_figure, x, losses, lr, bounds, r.label,
            fig_dir / f"train_{safe(r.name)}", cfg.dpi)

    # Detection overlays.
    if cfg.overlays > 0:
        for r in runs:
            try:
                items = _overlay_items(r, cfg.overlays, notes)
            except (ValueError, TypeError, IndexError, KeyError) as e:
                notes.append(f"{r.name}: overlays skipped: malformed predictions ({type(e).__name__}: {e})")
                items = []
            if items:
                add(f"Detections on sample images — {r.label}", plots.overlay_figure, items, r.label,
                    fig_dir / f"overlays_{safe(r.name)}", cfg.dpi)
    return figs


def _error_curves(d: dict[str, Any]) -> dict[str, Any]:
    """COCO error-analysis block → ``{type: 101-point precision array | AP scalar}``.

    Accepts ``error_analysis`` or ``analysis`` whose values are arrays, scalars or
    ``{"ap": …, "precision": [...]}`` (tbx bench)."""
    ea = d.get("error_analysis") or d.get("analysis")
    if not isinstance(ea, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in ea.items():
        if isinstance(v, dict):
            v = v.get("precision") if isinstance(v.get("precision"), list) else v.get("ap")
        if isinstance(v, list):
            arr = _floats(v)
            if arr.size >= 2:
                out[k] = arr
        elif _num_any(v) is not None:
            out[k] = float(v)
    arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    return arrays if arrays else out  # curves win over scalars when a block mixes both


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xywh boxes ``a`` (N×4) and ``b`` (M×4)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def overlay_score(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                  thr: float = OVERLAY_SCORE_THR) -> float:
    """Mean over ground-truth boxes of the best IoU with a prediction of score ≥ ``thr`` (0 if none)."""
    if len(gt) == 0:
        return float("nan")
    keep = scores >= thr
    if not keep.any():
        return 0.0
    return float(_iou(gt, pred[keep]).max(axis=1).mean())


def _dataset_root(ann: Path) -> Path:
    # The layout root is the parent of annotations/json/ (SPEC §1.3).
    if ann.parent.name == "json" and ann.parent.parent.name == "annotations":
        return ann.parent.parent.parent
    return ann.parent


def _overlay_items(r: Run, n: int, notes: list[str]) -> list[Any]:
    from PIL import Image

    from tbx.bench.plots import OverlayItem
    from tbx.data.coco import read_coco
    from tbx.data.layout import IMGS, resolve_inside

    pred_dir = r.path / "predictions"
    if not pred_dir.is_dir():
        notes.append(f"{r.name}: no predictions/ — overlays skipped")
        return []
    man = r.manifest or {}
    ann_s = man.get("ann") or man.get("annotations")
    if not ann_s:
        notes.append(f"{r.name}: no predictions/manifest.json with 'ann' — overlays skipped")
        return []
    ann = Path(ann_s)
    if not ann.is_absolute():
        cands = [r.path / ann, pred_dir / ann, Path.cwd() / ann]
        ann = next((c for c in cands if c.is_file()), cands[0])
    if not ann.is_file():
        notes.append(f"{r.name}: annotation file {ann_s} not reachable — overlays skipped")
        return []
    try:
        records = read_coco(ann, strict_labels=False)
    except TbxError as e:
        notes.append(f"{r.name}: cannot read {ann} ({e.what}) — overlays skipped")
        return []
    root = _dataset_root(ann)
    if man.get("data_root") and Path(man["data_root"]).is_dir():
        root = Path(man["data_root"])
    boxes_pred: dict[int, list[dict[str, Any]]] = {}
    bbox_file = pred_dir / "bbox_result.json"
    if bbox_file.is_file():
        dets = _read_json(bbox_file)
        if not isinstance(dets, list):
            raise TbxError("bbox_result.json must be a JSON list of COCO results", bbox_file)
        for d in dets:
            if isinstance(d, dict) and "image_id" in d and "bbox" in d:
                boxes_pred.setdefault(int(d["image_id"]), []).append(d)
    else:
        notes.append(f"{r.name}: no predictions/bbox_result.json — overlays show ground truth only")
    p_tb: dict[int, float] = {}
    cls_file = pred_dir / "cls_result.txt"
    if cls_file.is_file():
        lines = [ln for ln in cls_file.read_text().splitlines() if ln.strip()]
        if len(lines) == len(records):
            for rec, ln in zip(records, lines):
                parts = ln.split()
                try:
                    p_tb[rec.image_id] = float(parts[2])
                except (IndexError, ValueError):
                    raise TbxError("bad cls_result.txt line (need 3 probabilities)",
                                   where(cls_file, lines.index(ln) + 1)) from None
        else:
            notes.append(f"{r.name}: cls_result.txt has {len(lines)} lines for {len(records)} images in "
                         f"{ann.name} — uncertainty ranking skipped")

    def img_path(rec) -> Path:
        return resolve_inside(root / IMGS, rec.file_name, ann, "imgs/")

    reachable = [rec for rec in records if img_path(rec).is_file()]
    if not reachable:
        notes.append(f"{r.name}: images of {ann} not found under {root / IMGS} — overlays skipped")
        return []

    def arrs(rec):
        gt = np.asarray([[b.x, b.y, b.w, b.h] for b in rec.boxes], float).reshape(-1, 4)
        pd = boxes_pred.get(rec.image_id, [])
        pb = np.asarray([d["bbox"] for d in pd], float).reshape(-1, 4)
        ps = np.asarray([float(d.get("score", 1.0)) for d in pd], float)
        return gt, pb, ps

    scored = []
    for rec in reachable:
        if rec.boxes:
            gt, pb, ps = arrs(rec)
            scored.append((overlay_score(gt, pb, ps), len(rec.boxes), rec))
    k = max(1, n // 3)
    chosen: list[tuple[str, Any, float | None]] = []
    used: set[int] = set()
    best = sorted(scored, key=lambda t: (-t[0], -t[1], t[2].image_id))
    worst = sorted(scored, key=lambda t: (t[0], -t[1], t[2].image_id))
    for tag, seq in (("best", best), ("worst", worst)):
        picked = 0
        for q, _, rec in seq:
            if picked >= k:
                break
            if rec.image_id in used:
                continue
            used.add(rec.image_id)
            chosen.append((tag, rec, q))
            picked += 1
    if p_tb:
        unc = sorted((rec for rec in reachable if rec.image_id in p_tb),
                     key=lambda rec: (abs(p_tb[rec.image_id] - 0.5), rec.image_id))
        picked = 0
        for rec in unc:
            if picked >= k:
                break
            if rec.image_id in used:
                continue
            used.add(rec.image_id)
            chosen.append(("uncertain", rec, None))
            picked += 1
    else:
        notes.append(f"{r.name}: no usable cls_result.txt — 'most uncertain' overlays skipped")
    if not chosen:
        notes.append(f"{r.name}: no TB images with boxes reachable — overlays skipped")
        return []
    items = []
    for tag, rec, q in chosen:
        gt, pb, ps = arrs(rec)
        pd = boxes_pred.get(rec.image_id, [])
        with Image.open(img_path(rec)) as im:
            arr = np.asarray(im.convert("L"))
        items.append(OverlayItem(
            image=arr, title=rec.file_name, tag=tag, quality=q, p_tb=p_tb.get(rec.image_id),
            gt=[(b.x, b.y, b.w, b.h, b.category) for b in rec.boxes],
            pred=[(*map(float, d["bbox"]), int(d.get("category_id", 1)), float(d.get("score", 1.0)))
                  for d in pd if float(d.get("score", 1.0)) >= OVERLAY_SCORE_THR]))
    return items


# ----------------------------------------------------------------------------------------------- html
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


def render_html(tables: list[Table], figs: list[tuple[str, list[Path]]], runs: list[Run], notes: list[str],
                title: str) -> str:
    h = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{h(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{h(title)}</h1>",
           "<p>Runs: " + ", ".join(h(r.name) for r in runs) + "</p>", "<h2>Tables</h2>"]
    out += [render_html_table(t) for t in tables]
    out.append("<h2>Figures</h2>")
    for caption, paths in figs:
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is None:
            continue
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(f'<figure><img alt="{h(caption)}" src="data:image/png;base64,{b64}">'
                   f"<figcaption>{h(caption)}</figcaption></figure>")
    if notes:
        out.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{h(n)}</li>" for n in notes) + "</ul>")
    out.append("<h2>Provenance</h2>")
    for r in runs:
        out.append(f"<h3>{h(r.name)}</h3><p>{h(str(r.path.resolve()))}<br>{h(_provenance_summary(r))}</p>")
        if r.config:
            out.append("<details><summary>config.yaml</summary><pre>"
                       + h(yaml.safe_dump(r.config, sort_keys=False)) + "</pre></details>")
        if r.provenance:
            out.append("<details><summary>provenance.json</summary><pre>"
                       + h(json.dumps(r.provenance, indent=2, default=str)) + "</pre></details>")
        if r.manifest:
            out.append("<details><summary>predictions/manifest.json</summary><pre>"
                       + h(json.dumps(r.manifest, indent=2, default=str)) + "</pre></details>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_report_md(tables: list[Table], figs: list[tuple[str, list[Path]]], runs: list[Run],
                     notes: list[str], out_root: Path, title: str) -> str:
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


# ------------------------------------------------------------------------------------------- driver
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
    tables = [classification_table(runs, groups, ref), complexity_table(runs, groups, ref),
              detection_table(runs, groups, ref), screening_table(runs, groups)]
    if study or any(r.study for r in runs) or ref:
        tables.append(reader_table(runs, study, ref))
    return tables


def make_report(run_dirs: list[Path], out: Path, cfg: ReportConfig | None = None) -> ReportResult:
    """Write tables, figures, ``report.html`` and ``provenance.json`` for ``run_dirs`` into ``out``."""
    cfg = cfg or ReportConfig()
    if not run_dirs:
        raise TbxError("no run directories given", fix="tbx report runs/<name> [runs/<other> ...] --out DIR")
    out = Path(out)
    if not _is_replaceable(out):
        raise TbxError("output directory exists and is not an earlier tbx report", out,
                       "choose a new --out directory (it is replaced as a whole)")
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
        write_provenance(tmp, cfg, None, kind="tbx-report",
                         runs=[{"name": r.name, "path": str(r.path.resolve()), "model": r.model,
                                "fold": r.fold} for r in runs],
                         study=str(cfg.study) if cfg.study else None, notes=notes)
        _normal_permissions(tmp)
        result.figures = [out / p.relative_to(tmp) for _, ps in figs for p in ps]
        result.tables = {k: [out / p.relative_to(tmp) for p in v] for k, v in result.tables.items()}
    result.notes_file = out / "notes.txt"
    result.provenance = out / "provenance.json"
    result.notes = notes
    return result
