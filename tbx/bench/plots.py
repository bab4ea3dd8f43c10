"""Figures of ``tbx report`` (matplotlib, Agg, no pyplot state): each saved as PNG and PDF.

Every figure stays readable in grayscale: series differ by line style and marker as well as by
colour, filled areas carry hatches, and the confusion-matrix colour map is monotonic in lightness.
All functions take plain arrays (no run objects) and return the written paths ``[png, pdf]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter  # noqa: E402

from tbx.bench.classification import SENS_TARGET, SPEC_TARGET  # noqa: E402
from tbx.io import atomic_path  # noqa: E402

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CLASS_NAMES = ("healthy", "sick (non-TB)", "TB")
# Overlay categories (docs/dataset.md §1.1): 1 active green, 2 latent red, 3 uncertain blue;
# line styles for grayscale.
CAT_STYLE = {1: ("#1a9e1a", "-", "active"), 2: ("#d62728", "--", "latent"), 3: ("#1f5fd6", ":", "uncertain")}
ERROR_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
ERROR_LABELS = {
    "C75": "C75 (IoU .75)",
    "C50": "C50 (IoU .50)",
    "Loc": "Loc (IoU .10, loc. errors)",
    "Sim": "Sim (supercategory confusion)",
    "Oth": "Oth (class confusion)",
    "BG": "BG (background FPs removed)",
    "FN": "FN (all FNs removed)",
}
ERROR_FILL = {
    "C75": "#08306b",
    "C50": "#2171b5",
    "Loc": "#6baed6",
    "Sim": "#9e9ac8",
    "Oth": "#fdae6b",
    "BG": "#fee391",
    "FN": "#f7f7f7",
}
ERROR_HATCH = {"C75": "", "C50": "//", "Loc": "..", "Sim": "xx", "Oth": "\\\\", "BG": "--", "FN": "++"}


def style(i: int) -> dict[str, Any]:
    """Colour + line style + marker of the i-th series (distinct in grayscale too)."""
    return {
        "color": COLORS[i % len(COLORS)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def save(fig: Figure, stem: Path, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (atomic) and return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(stem.name + "." + fmt)
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)  # layout: constrained
        out.append(path)
    return out


# ---------------------------------------------------------------------------------- confusion matrix
def confusion_figure(cm: np.ndarray, title: str, stem: Path, dpi: int = 150) -> list[Path]:
    """3×3 confusion matrix (rows = truth, columns = prediction): counts and row-normalised."""
    cm = np.asarray(cm, float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = Figure(figsize=(10.0, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "row-normalised", "{:.1%}"))
    for ax, data, sub, fmt in panels:
        vmax = data.max() if data.max() > 0 else 1.0
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax)
        for i in range(3):
            for j in range(3):
                v = data[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(v),
                    ha="center",
                    va="center",
                    fontsize=11,
                    color="white" if v > 0.55 * vmax else "black",
                    fontweight="bold" if i == j else "normal",
                )
        ax.set_xticks(range(3), CLASS_NAMES)
        ax.set_yticks(range(3), CLASS_NAMES, rotation=90, va="center")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(sub)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(f"Confusion matrix — {title}")
    return save(fig, stem, dpi)


# -------------------------------------------------------------------------------------------- ROC
@dataclass
class RocCurve:
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float | None = None
    points: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (sens, spec)


def roc_figure(
    curves: Sequence[RocCurve], readers: Sequence[tuple[str, float, float]], stem: Path, dpi: int = 150
) -> list[Path]:
    """TB ROC curves overlaid (full range + zoom on the screening corner), screening operating points
    marked (circle: sens @ spec .70, square: spec @ sens .90), readers as stars at (1 − spec, sens)."""
    fig = Figure(figsize=(10.5, 5.6), layout="constrained")
    full, zoom = fig.subplots(1, 2)
    point_marks = {"sens @ spec .70": "o", "spec @ sens .90": "s"}
    reader_marks = ("*", "P", "X", "h")
    handles: list[Any] = []
    for ax, is_zoom in ((full, False), (zoom, True)):
        if not is_zoom:
            (h,) = ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="chance")
            handles.append(h)
        for i, c in enumerate(curves):
            st = style(i)
            lab = c.label + (f" (AUC {100 * c.auc:.1f})" if c.auc is not None else "")
            (h,) = ax.plot(
                c.fpr,
                c.tpr,
                color=st["color"],
                ls=st["linestyle"],
                lw=1.8,
                label=lab,
                marker=st["marker"],
                markevery=max(1, len(c.fpr) // 8),
                markersize=5,
                markerfacecolor="none",
            )
            if not is_zoom:
                handles.append(h)
            for name, (se, sp) in c.points.items():
                ax.plot(
                    [1 - sp],
                    [se],
                    marker=point_marks.get(name, "*"),
                    markersize=9,
                    ls="none",
                    markerfacecolor=st["color"],
                    markeredgecolor="black",
                    markeredgewidth=1.2,
                    zorder=5,
                )
        for k, (name, se, sp) in enumerate(readers):
            (h,) = ax.plot(
                [1 - sp],
                [se],
                marker=reader_marks[k % 4],
                markersize=14,
                color="black",
                markerfacecolor="#E69F00",
                ls="none",
                label=f"reader: {name}",
                zorder=6,
            )
            if not is_zoom:
                handles.append(h)
        ax.axvline(1 - SPEC_TARGET, color="0.7", lw=0.8, ls="--")  # the screening targets
        ax.axhline(SENS_TARGET, color="0.7", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.set_xlabel("1 − specificity (false-positive rate)")
        ax.set_ylabel("sensitivity (true-positive rate)")
    for name, m in point_marks.items():
        handles.append(
            Line2D(
                [],
                [],
                marker=m,
                markerfacecolor="white",
                markeredgecolor="black",
                ls="none",
                markersize=8,
                label=name,
            )
        )
    full.set_xlim(-0.01, 1.01)
    full.set_ylim(-0.01, 1.01)
    full.set_aspect("equal")
    full.set_title("TB vs non-TB ROC")
    ys = [se for c in curves for se, _ in c.points.values()] + [se for _, se, _ in readers]
    lo = min([0.6] + [y - 0.05 for y in ys])
    zoom.set_xlim(0, 0.4)
    zoom.set_ylim(max(0.0, lo), 1.005)
    zoom.set_title("zoom: screening region (dashed: spec .70, sens .90)")
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False
    )
    return save(fig, stem, dpi)


# ----------------------------------------------------------------------------------------- PR / errors
def _prec(v: Any) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, float).ravel()
    if a.size < 2:
        return None
    return np.where(a < 0, np.nan, a)


def pr_figure(
    pr: dict[str, dict[str, Any]],
    titles: Sequence[str],
    order: Sequence[str],
    title: str,
    stem: Path,
    dpi: int = 150,
) -> list[Path]:
    """Precision–recall per category (subplots) at IoU .50 (solid) and .75 (dashed)."""
    cats = [c for c in order if c in pr]
    fig = Figure(figsize=(4.0 * len(cats), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cats), sharey=True))
    names = dict(zip(order, titles))
    for ax, cat in zip(axes, cats):
        rec = pr[cat].get("recall")
        for j, (key, lab) in enumerate((("iou50", "IoU 0.50"), ("iou75", "IoU 0.75"))):
            p = _prec(pr[cat].get(key))
            if p is None:
                continue
            r = np.linspace(0, 1, p.size)
            if rec is not None and len(rec) == p.size:
                r = np.asarray(rec, float)
            st = style(j)
            ap = np.nanmean(p) if np.isfinite(p).any() else float("nan")
            ax.plot(
                r,
                p,
                color=st["color"],
                ls=st["linestyle"],
                lw=1.8,
                marker=st["marker"],
                markevery=max(1, p.size // 10),
                markersize=4,
                markerfacecolor="none",
                label=f"{lab} (AP {100 * ap:.1f})",
            )
        ax.set_title(names.get(cat, cat))
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("precision")
    fig.suptitle(f"Precision–recall — {title}")
    return save(fig, stem, dpi)


def error_analysis_figure(
    ea: dict[str, dict[str, Any]], titles: dict[str, str], title: str, stem: Path, dpi: int = 150
) -> list[Path]:
    """COCO analyze-style breakdown per category: stacked areas between the cumulative PR curves
    C75 ≤ C50 ≤ Loc ≤ Sim ≤ Oth ≤ BG ≤ FN (legend shows each curve's AP); AP scalars instead of
    curves give a stacked bar of the increments."""
    cats = list(ea)
    fig = Figure(figsize=(4.3 * len(cats), 6.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cats), sharey=True))
    for ax, cat in zip(axes, cats):
        d = ea[cat]
        types = [t for t in ERROR_TYPES if t in d]
        curves = {t: _prec(d[t]) for t in types}
        if all(c is not None for c in curves.values()) and types:
            n = next(iter(curves.values())).size
            r = np.linspace(0, 1, n)
            prev = np.zeros(n)
            for t in types:
                cur = np.nan_to_num(curves[t], nan=0.0)
                cur = np.maximum(cur, prev)  # cumulative by construction; guards rounding
                ap = float(np.nanmean(curves[t]))
                ax.fill_between(
                    r,
                    prev,
                    cur,
                    facecolor=ERROR_FILL[t],
                    hatch=ERROR_HATCH[t],
                    edgecolor="0.35",
                    linewidth=0.6,
                    label=f"[{ap:.3f}] {ERROR_LABELS[t]}",
                )
                prev = cur
            ax.set_xlim(0, 1)
            ax.set_xlabel("recall")
        else:
            vals = [
                float(d[t]) if isinstance(d[t], (int, float)) else float(np.nanmean(_prec(d[t])))
                for t in types
            ]
            prev = 0.0
            for t, v in zip(types, vals):
                v = max(v, prev)
                ax.bar(
                    [0],
                    [v - prev],
                    bottom=[prev],
                    width=0.6,
                    color=ERROR_FILL[t],
                    hatch=ERROR_HATCH[t],
                    edgecolor="0.35",
                    label=f"[{v:.3f}] {ERROR_LABELS[t]}",
                )
                prev = v
            ax.set_xticks([])
            ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(0, 1.0)
        ax.set_title(titles.get(cat, cat))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, frameon=False)
    axes[0].set_ylabel("precision")
    fig.suptitle(f"COCO error analysis — {title}")
    return save(fig, stem, dpi)


# ------------------------------------------------------------------------------------------------ FROC
def parse_froc(v: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A FROC of the bench schema, ``{fppi: [...], sensitivity: [...]}`` (:mod:`tbx.bench.schema`),
    sorted by FP/image; None when absent or malformed."""
    if not isinstance(v, dict) or "fppi" not in v or "sensitivity" not in v:
        return None
    x, y = v["fppi"], v["sensitivity"]
    try:
        x, y = (
            np.asarray([np.nan if a is None else a for a in np.ravel(np.asarray(v, object))], float)
            for v in (x, y)
        )
    except (TypeError, ValueError):
        return None
    if x.size != y.size or x.size < 1:
        return None
    o = np.argsort(x, kind="stable")
    return x[o], y[o]


@dataclass
class FrocCurve:
    label: str
    fppi: np.ndarray
    sens: np.ndarray
    points: tuple[np.ndarray, np.ndarray] | None = None  # sensitivity at the standard FPPI rates


def froc_figure(
    curves: dict[str, list[FrocCurve]], titles: dict[str, str], mode: str, stem: Path, dpi: int = 150
) -> list[Path]:
    """FROC per category (sensitivity vs false positives per image, log x), runs overlaid; markers at
    the standard rates when given."""
    cats = list(curves)
    fig = Figure(figsize=(4.2 * len(cats), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cats), sharey=True))
    for ax, cat in zip(axes, cats):
        xs = np.concatenate(
            [c.fppi[c.fppi > 0] for c in curves[cat]]
            + [c.points[0][c.points[0] > 0] for c in curves[cat] if c.points is not None]
            + [np.array([1.0])]
        )
        lo, hi = np.floor(np.log2(xs.min())), np.ceil(np.log2(xs.max()))
        ticks = 2.0 ** np.arange(lo, hi + 1)
        for i, c in enumerate(curves[cat]):
            st = style(i)
            pos = (c.fppi > 0) & np.isfinite(c.sens)
            has_pts = c.points is not None
            fx, fy = c.fppi[pos], c.sens[pos]
            if has_pts and fx.size and np.nanmax(c.points[0]) > fx[-1]:
                # beyond the last detection the sensitivity stays where it is
                fx, fy = np.r_[fx, np.nanmax(c.points[0])], np.r_[fy, fy[-1]]
            ax.plot(
                fx,
                fy,
                color=st["color"],
                ls=st["linestyle"],
                lw=1.6,
                drawstyle="steps-post",
                marker=None if has_pts else st["marker"],
                markersize=5,
                markerfacecolor="none",
            )
            if has_pts:
                px, py = c.points
                ok = (px > 0) & np.isfinite(py)
                ax.plot(
                    px[ok],
                    py[ok],
                    color=st["color"],
                    ls="none",
                    marker=st["marker"],
                    markersize=6,
                    markerfacecolor="none",
                )
            ax.plot(
                [],
                [],
                color=st["color"],
                ls=st["linestyle"],
                marker=st["marker"],
                markerfacecolor="none",
                label=c.label,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" if t >= 1 else f"1/{1 / t:g}" for t in ticks]))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("false positives per image")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(titles.get(cat, cat))
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("sensitivity (lesion-level)")
    fig.suptitle(f"FROC — {mode}")
    return save(fig, stem, dpi)


# -------------------------------------------------------------------------------------- training
def training_figure(
    x: np.ndarray,
    losses: dict[str, np.ndarray],
    lr: np.ndarray,
    bounds: Sequence[tuple[float, str]],
    title: str,
    stem: Path,
    dpi: int = 150,
) -> list[Path]:
    """Loss terms vs iteration (left axis), learning rate on a twin axis, stage boundaries marked."""
    fig = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = fig.subplots()
    handles = []
    # NaN at each stage boundary so that no line joins the last point of a stage to the next stage
    cut = np.searchsorted(x, [b for b, _ in bounds])

    def broken(v: np.ndarray) -> np.ndarray:
        return np.insert(np.asarray(v, float), cut, np.nan)

    x = broken(x)
    losses = {k: broken(v) for k, v in losses.items()}
    lr = broken(lr)
    finite_all = np.concatenate([v[np.isfinite(v)] for v in losses.values()]) if losses else np.array([])
    for i, (k, v) in enumerate(losses.items()):
        st = style(i)
        ok = np.isfinite(v) | np.isnan(x)  # keep the boundary NaNs (they break the line)
        (h,) = ax.plot(
            x[ok],
            v[ok],
            color=st["color"],
            ls=st["linestyle"],
            lw=1.3,
            marker=st["marker"],
            markevery=max(1, int(ok.sum()) // 10),
            markersize=4,
            markerfacecolor="none",
            label=k,
        )
        handles.append(h)
    pos = finite_all[finite_all > 0]
    if pos.size and pos.max() / pos.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if np.isfinite(lr).any():
        ax2 = ax.twinx()
        ok = np.isfinite(lr) | np.isnan(x)
        (h,) = ax2.plot(x[ok], lr[ok], color="0.35", ls=(0, (1, 1)), lw=1.4, label="lr (right axis)")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        handles.append(h)
    for bx, stage in bounds:
        ax.axvline(bx, color="black", ls="--", lw=1.0)
        ax.annotate(
            f"→ stage {stage}",
            xy=(bx, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, 4),
            textcoords="offset points",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "lw": 0},
        )
    if bounds:
        handles.append(Line2D([], [], color="black", ls="--", lw=1.0, label="stage boundary"))
    ax.set_title(f"Training — {title}")
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False
    )
    return save(fig, stem, dpi)


# --------------------------------------------------------------------------------------- overlays
@dataclass
class OverlayItem:
    image: np.ndarray  # H×W grayscale
    title: str
    tag: str  # best | worst | uncertain
    quality: float | None  # mean best-IoU of the ground truth (best / worst)
    p_tb: float | None
    gt: list[tuple[float, float, float, float, int]]  # x, y, w, h, category
    pred: list[tuple[float, float, float, float, int, float]]  # x, y, w, h, category, score


def overlay_figure(items: Sequence[OverlayItem], title: str, stem: Path, dpi: int = 150) -> list[Path]:
    """Grid of images (rows: best / worst / most uncertain): ground truth thick, predictions thin with
    scores; green active, red latent, blue uncertain, with a line style per category."""
    tags = [t for t in ("best", "worst", "uncertain") if any(it.tag == t for it in items)]
    per = max(sum(1 for it in items if it.tag == t) for t in tags)
    # one image per group: a single row; else one row per group
    nrow, ncol = (1, len(tags)) if per == 1 else (len(tags), per)
    fig = Figure(figsize=(3.3 * ncol, 3.6 * nrow + 0.5), layout="constrained")
    axes = np.array(fig.subplots(nrow, ncol, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    row_title = {"best": "best detections", "worst": "worst detections", "uncertain": "most uncertain p(TB)"}
    for r, tag in enumerate(tags):
        for c, it in enumerate([it for it in items if it.tag == tag]):
            ax = axes[0, r] if per == 1 else axes[r, c]
            ax.imshow(it.image, cmap="gray", vmin=0, vmax=255 if it.image.max() > 1 else 1)
            for x, y, w, h, cat in it.gt:
                col, ls, _ = CAT_STYLE.get(cat, ("#ffffff", "-", "?"))
                ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=3.2, ec=col, ls=ls))
            for x, y, w, h, cat, s in it.pred:
                col, ls, _ = CAT_STYLE.get(cat, ("#ffffff", "-", "?"))
                ax.add_patch(Rectangle((x, y), w, h, fill=False, lw=1.1, ec=col, ls=ls))
                ax.text(
                    x + 2,
                    y + 2,
                    f"{s:.2f}",
                    color="white",
                    fontsize=6,
                    va="top",
                    bbox={"facecolor": col, "alpha": 0.7, "pad": 0.5, "lw": 0},
                )
            sub = []
            if it.quality is not None:
                sub.append(f"IoU {it.quality:.2f}")
            if it.p_tb is not None:
                sub.append(f"p(TB) {it.p_tb:.2f}")
            head = f"{it.title}\n{row_title[tag]}" + (f" · {', '.join(sub)}" if sub else "")
            ax.set_title(head, fontsize=7)
    handles = [
        Line2D([], [], color="black", lw=3.2, label="ground truth"),
        Line2D([], [], color="black", lw=1.1, label="prediction (score ≥ 0.3)"),
    ]
    handles += [
        Patch(facecolor="none", edgecolor=col, linestyle=ls, lw=2, label=name)
        for col, ls, name in CAT_STYLE.values()
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=3 if ncol < 3 else len(handles),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(f"Detections — {title}")
    return save(fig, stem, dpi)
