"""The report's figures: training curves, ROC / PR / FROC, error analysis, overlays."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbx.bench.report.config import DET_CATS, DET_MODES, OVERLAY_SCORE_THR, ReportConfig
from tbx.bench.report.runs import Run, _num, _read_json
from tbx.bench.report.tables import _floats, _num_any, _roc, _study_model_label, screening_points
from tbx.errors import TbxError, where


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


class _Figures:
    """The figures drawn so far, as ``[(caption, [png, pdf]), ...]``, and where they go."""

    def __init__(self, fig_dir: Path, dpi: int, notes: list[str]):
        self.fig_dir, self.dpi, self.notes = fig_dir, dpi, notes
        self.drawn: list[tuple[str, list[Path]]] = []

    def add(self, caption: str, draw: Any, *args: Any) -> None:
        """``draw(*args, out_stem, dpi)``; malformed arrays in a hand-made JSON cost one figure
        (with a note), never the report."""
        try:
            self.drawn.append((caption, draw(*args)))
        except (ValueError, TypeError, IndexError, KeyError) as e:
            self.notes.append(f"figure '{caption}' skipped: malformed data ({type(e).__name__}: {e})")

    def path(self, stem: str) -> Path:
        return self.fig_dir / stem


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-") or "run"


def _figures_for_runs(
    runs: list[Run], cfg: ReportConfig, study: dict[str, Any] | None, fig_dir: Path, notes: list[str]
) -> list[tuple[str, list[Path]]]:
    """Draw every figure the runs allow; returns ``[(caption, [png, pdf]), ...]``."""
    figs = _Figures(fig_dir, cfg.dpi, notes)
    _confusion_figures(runs, figs)
    _roc_figure(runs, study, figs)
    for mode, mode_h in DET_MODES:
        _detection_figures(runs, mode, mode_h, figs)
    _training_figures(runs, figs)
    if cfg.overlays > 0:
        _overlay_figures(runs, cfg.overlays, figs)
    return figs.drawn


def _confusion_figures(runs: list[Run], figs: _Figures) -> None:
    """One confusion matrix per run."""
    from tbx.bench import plots

    for r in runs:
        cm = r.cls.get("confusion")
        if cm is None:
            if r.cls:
                figs.notes.append(
                    f"{r.name}: no classification.confusion in bench JSON — confusion matrix skipped"
                )
            continue
        try:
            cm = np.asarray(cm, float)
        except (TypeError, ValueError):
            cm = np.zeros(0)
        if cm.shape != (3, 3):
            figs.notes.append(f"{r.name}: classification.confusion is not 3×3 — confusion matrix skipped")
            continue
        figs.add(
            f"Confusion matrix — {r.label}",
            plots.confusion_figure,
            cm,
            r.label,
            figs.path(f"confusion_{_safe(r.name)}"),
            figs.dpi,
        )


def _roc_figure(runs: list[Run], study: dict[str, Any] | None, figs: _Figures) -> None:
    """ROC of every run with its screening points, the readers and the study's model curve."""
    from tbx.bench import plots

    curves = []
    for r in runs:
        roc = _roc(r)
        if roc is None:
            if r.cls:
                figs.notes.append(f"{r.name}: no classification.roc arrays — not in the ROC figure")
            continue
        pts = {}
        a, b = screening_points(r)
        if a:
            pts["sens @ spec .70"] = a
        if b:
            pts["spec @ sens .90"] = b
        curves.append(plots.RocCurve(r.label, roc[0], roc[1], _num(r.cls.get("auc")), pts))
    studies = ([study] if study else []) + [r.study for r in runs if r.study]
    readers = []
    for s in studies:
        for rd in s.get("readers", []):
            if not isinstance(rd, dict):
                continue
            se, sp = _num(rd.get("sensitivity")), _num(rd.get("specificity"))
            if se is not None and sp is not None:
                p = (str(rd.get("name", "reader")), se, sp)
                if p not in readers:
                    readers.append(p)
    for s in studies:
        m = s.get("model") if isinstance(s.get("model"), dict) else None
        roc = m.get("roc") if m else None
        if isinstance(roc, dict):
            fpr, tpr = _floats(roc.get("fpr")), _floats(roc.get("tpr"))
            label = _study_model_label(s)
            if fpr.size >= 2 and fpr.shape == tpr.shape and not any(c.label == label for c in curves):
                curves.append(plots.RocCurve(label, fpr, tpr, _num(m.get("auc"))))
    if curves:
        figs.add("ROC of TB vs non-TB", plots.roc_figure, curves, readers, figs.path("roc_tb"), figs.dpi)


def _detection_figures(runs: list[Run], mode: str, mode_h: str, figs: _Figures) -> None:
    """Detection in one mode: PR per category at IoU .5/.75 and error analysis per run, FROC."""
    from tbx.bench import plots

    froc_curves: dict[str, list[Any]] = {}
    for r in runs:
        if not r.has_mode(mode):
            continue
        pr = {cat: r.det(mode, cat).get("pr") for cat, _ in DET_CATS}
        pr = {c: v for c, v in pr.items() if isinstance(v, dict) and (v.get("iou50") or v.get("iou75"))}
        pr = {
            c: {k: (_floats(x) if isinstance(x, list) else None) for k, x in v.items()} for c, v in pr.items()
        }
        if pr:
            figs.add(
                f"Precision–recall, {mode_h} — {r.label}",
                plots.pr_figure,
                pr,
                [h for _, h in DET_CATS],
                [c for c, _ in DET_CATS],
                f"{r.label} — {mode_h}",
                figs.path(f"pr_{mode}_{_safe(r.name)}"),
                figs.dpi,
            )
        else:
            figs.notes.append(f"{r.name}: no detection.{mode}.*.pr arrays — PR figure skipped")
        ea = {cat: _error_curves(r.det(mode, cat)) for cat, _ in DET_CATS}
        ea = {c: v for c, v in ea.items() if v}
        if ea:
            figs.add(
                f"COCO error analysis, {mode_h} — {r.label}",
                plots.error_analysis_figure,
                ea,
                dict(DET_CATS),
                f"{r.label} — {mode_h}",
                figs.path(f"errors_{mode}_{_safe(r.name)}"),
                figs.dpi,
            )
        else:
            figs.notes.append(
                f"{r.name}: no detection.{mode}.*.error_analysis — error-analysis figure skipped"
            )
        for cat, _ in DET_CATS:
            d = r.det(mode, cat)
            pts = plots.parse_froc(d.get("froc"))
            curve = plots.parse_froc(d.get("froc_curve")) or pts  # full curve when the bench gives it
            if curve is not None:
                froc_curves.setdefault(cat, []).append(
                    plots.FrocCurve(r.label, curve[0], curve[1], pts if curve is not pts else None)
                )
    if froc_curves:
        figs.add(
            f"FROC, {mode_h}",
            plots.froc_figure,
            froc_curves,
            dict(DET_CATS),
            mode_h,
            figs.path(f"froc_{mode}"),
            figs.dpi,
        )
    elif any(r.has_mode(mode) for r in runs):
        figs.notes.append(f"no detection.{mode}.*.froc in any run — FROC figure skipped")


def _training_figures(runs: list[Run], figs: _Figures) -> None:
    """Loss terms and lr over the global step, one figure per run with metrics.jsonl."""
    from tbx.bench import plots

    for r in runs:
        if not r.metrics:
            figs.notes.append(f"{r.name}: no metrics.jsonl — training curves skipped")
            continue
        rows = [row for row in r.metrics if row.get("kind", "train") == "train"]
        if not rows:
            figs.notes.append(f"{r.name}: metrics.jsonl has no training rows — training curves skipped")
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
            figs.notes.append(f"{r.name}: metrics.jsonl has no loss*/lr values — training curves skipped")
            continue
        figs.add(
            f"Training curves — {r.label}",
            plots.training_figure,
            x,
            losses,
            lr,
            bounds,
            r.label,
            figs.path(f"train_{_safe(r.name)}"),
            figs.dpi,
        )


def _overlay_figures(runs: list[Run], n: int, figs: _Figures) -> None:
    """Detections drawn on ``n`` sample images per run (see :func:`_overlay_items`)."""
    from tbx.bench import plots

    for r in runs:
        try:
            items = _overlay_items(r, n, figs.notes)
        except (ValueError, TypeError, IndexError, KeyError) as e:
            figs.notes.append(f"{r.name}: overlays skipped: malformed predictions ({type(e).__name__}: {e})")
            items = []
        if items:
            figs.add(
                f"Detections on sample images — {r.label}",
                plots.overlay_figure,
                items,
                r.label,
                figs.path(f"overlays_{_safe(r.name)}"),
                figs.dpi,
            )


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
    """IoU matrix of xywh boxes ``a`` (N×4) and ``b`` (M×4) (``torchvision.ops.box_iou``, float64;
    0 where both boxes are empty)."""
    import torch
    from torchvision.ops import box_convert, box_iou

    ta, tb = (box_convert(torch.as_tensor(np.asarray(x, np.float64)), "xywh", "xyxy") for x in (a, b))
    return torch.nan_to_num(box_iou(ta, tb), nan=0.0).numpy()


def overlay_score(
    gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, thr: float = OVERLAY_SCORE_THR
) -> float:
    """Mean over ground-truth boxes of the best IoU with a prediction of score ≥ ``thr`` (0 if none)."""
    if len(gt) == 0:
        return float("nan")
    keep = scores >= thr
    if not keep.any():
        return 0.0
    return float(_iou(gt, pred[keep]).max(axis=1).mean())


def _dataset_root(ann: Path) -> Path:
    # The layout root is the parent of annotations/json/ (docs/dataset.md §1.3).
    if ann.parent.name == "json" and ann.parent.parent.name == "annotations":
        return ann.parent.parent.parent
    return ann.parent


@dataclass
class _OverlaySource:
    """What the overlays of one run are drawn from."""

    ann: Path
    root: Path
    records: list[Any]
    boxes: dict[int, list[dict[str, Any]]]  # image id → predicted COCO boxes
    p_tb: dict[int, float]  # image id → p(TB)


def _overlay_items(r: Run, n: int, notes: list[str]) -> list[Any]:
    from PIL import Image

    from tbx.bench.plots import OverlayItem
    from tbx.data.layout import IMGS, resolve_inside

    src = _overlay_source(r, notes)
    if src is None:
        return []

    def img_path(rec: Any) -> Path:
        return resolve_inside(src.root / IMGS, rec.file_name, src.ann, "imgs/")

    reachable = [rec for rec in src.records if img_path(rec).is_file()]
    if not reachable:
        notes.append(f"{r.name}: images of {src.ann} not found under {src.root / IMGS} — overlays skipped")
        return []
    chosen = _pick_overlays(r, src, reachable, n, notes)
    if not chosen:
        notes.append(f"{r.name}: no TB images with boxes reachable — overlays skipped")
        return []
    items = []
    for tag, rec, q in chosen:
        pd = src.boxes.get(rec.image_id, [])
        with Image.open(img_path(rec)) as im:
            arr = np.asarray(im.convert("L"))
        items.append(
            OverlayItem(
                image=arr,
                title=rec.file_name,
                tag=tag,
                quality=q,
                p_tb=src.p_tb.get(rec.image_id),
                gt=[(b.x, b.y, b.w, b.h, b.category) for b in rec.boxes],
                pred=[
                    (*map(float, d["bbox"]), int(d.get("category_id", 1)), float(d.get("score", 1.0)))
                    for d in pd
                    if float(d.get("score", 1.0)) >= OVERLAY_SCORE_THR
                ],
            )
        )
    return items


def _overlay_source(r: Run, notes: list[str]) -> _OverlaySource | None:
    """The run's annotation file (from its prediction manifest), dataset root, predicted boxes and
    p(TB); None (with a note) when something needed is missing."""
    from tbx.data.coco import read_coco

    pred_dir = r.path / "predictions"
    if not pred_dir.is_dir():
        notes.append(f"{r.name}: no predictions/ — overlays skipped")
        return None
    man = r.manifest or {}
    ann_s = man.get("ann") or man.get("annotations")
    if not ann_s:
        notes.append(f"{r.name}: no predictions/manifest.json with 'ann' — overlays skipped")
        return None
    ann = Path(ann_s)
    if not ann.is_absolute():
        cands = [r.path / ann, pred_dir / ann, Path.cwd() / ann]
        ann = next((c for c in cands if c.is_file()), cands[0])
    if not ann.is_file():
        notes.append(f"{r.name}: annotation file {ann_s} not reachable — overlays skipped")
        return None
    try:
        records = read_coco(ann, strict_labels=False)
    except TbxError as e:
        notes.append(f"{r.name}: cannot read {ann} ({e.what}) — overlays skipped")
        return None
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
                    raise TbxError(
                        "bad cls_result.txt line (need 3 probabilities)", where(cls_file, lines.index(ln) + 1)
                    ) from None
        else:
            notes.append(
                f"{r.name}: cls_result.txt has {len(lines)} lines for {len(records)} images in "
                f"{ann.name} — uncertainty ranking skipped"
            )
    return _OverlaySource(ann, root, records, boxes_pred, p_tb)


def _pick_overlays(
    r: Run, src: _OverlaySource, reachable: list[Any], n: int, notes: list[str]
) -> list[tuple[str, Any, float | None]]:
    """``(tag, record, quality)`` of the best, worst and most uncertain images (module docstring)."""
    scored = []
    for rec in reachable:
        if rec.boxes:
            gt = np.asarray([[b.x, b.y, b.w, b.h] for b in rec.boxes], float).reshape(-1, 4)
            pd = src.boxes.get(rec.image_id, [])
            pb = np.asarray([d["bbox"] for d in pd], float).reshape(-1, 4)
            ps = np.asarray([float(d.get("score", 1.0)) for d in pd], float)
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
    if src.p_tb:
        p_tb = src.p_tb
        unc = sorted(
            (rec for rec in reachable if rec.image_id in p_tb),
            key=lambda rec: (abs(p_tb[rec.image_id] - 0.5), rec.image_id),
        )
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
    return chosen
