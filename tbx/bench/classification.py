"""Image classification metrics of the TBX11K protocol (docs/protocol.md §4.2) and screening operating points.

Predicted class = arg-max of ``p(healthy) p(sick) p(TB)``; TB is class 2.  Everything is computed
from *image weights* (1 per image for the point estimate, bootstrap counts for a resample), so one
code path serves both, vectorised over resamples:

- hard metrics come from the weighted 3×3 confusion matrix (rows = truth, columns = prediction):
  accuracy, macro precision ("AP") and macro recall ("AR") over the 3 classes (a class that is
  never predicted / never present contributes 0, like scikit-learn's ``zero_division=0``),
  sensitivity / specificity / F1 of TB vs non-TB, TP/TN/FP/FN;
- AUC(TB) and the ROC come from the scores of p(TB) grouped by distinct value (ties count ½,
  i.e. the trapezoidal ROC area = Mann–Whitney U / (P·N));
- operating points: the WHO target product profile for a TB triage test asks for sensitivity
  ≥ 90 % with specificity ≥ 70 %.  We report the best sensitivity among thresholds with
  specificity ≥ 0.70 and the best specificity among thresholds with sensitivity ≥ 0.90 (ties →
  the other measure higher), each with its threshold *t* on p(TB) (rule: TB if p(TB) ≥ t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TB = 2
SPEC_TARGET = 0.70  # WHO TPP triage: specificity ≥ 70 % ...
SENS_TARGET = 0.90  # ... and sensitivity ≥ 90 %


def _div(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def confusion_weighted(
    y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """(…, 3, 3) confusion matrix; ``weights`` (N,) or (B, N) image weights (default 1)."""
    cell = np.asarray(y_true) * 3 + np.asarray(y_pred)
    w = np.ones(cell.shape[0]) if weights is None else np.asarray(weights)
    if not np.issubdtype(w.dtype, np.integer):  # integer counts stay integers (exact, half the bytes)
        w = w.astype(np.float64)
    # per-cell sums over images sorted by cell (not a BLAS product: its idle threads spin on a
    # shared machine for longer than the sums take)
    order = np.argsort(cell, kind="stable")
    c = cell[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.zeros(0, np.int64)
    out = np.zeros((*w.shape[:-1], 9))
    if c.size:
        out[..., c[starts]] = np.add.reduceat(np.take(w, order, axis=-1), starts, axis=-1)
    return out.reshape(*w.shape[:-1], 3, 3)


def metrics_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Hard-prediction metrics from a (…, 3, 3) confusion matrix (vectorised over leading axes)."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum(axis=(-2, -1))
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    rows = conf.sum(axis=-1)  # per true class
    cols = conf.sum(axis=-2)  # per predicted class
    prec = np.nan_to_num(_div(diag, cols), nan=0.0)  # zero_division = 0 (scikit-learn default)
    rec = np.nan_to_num(_div(diag, rows), nan=0.0)
    tp = conf[..., TB, TB]
    fn = rows[..., TB] - tp
    fp = cols[..., TB] - tp
    tn = total - tp - fn - fp
    return {
        "accuracy": _div(diag.sum(axis=-1), total),
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ap": prec.mean(axis=-1),
        "ar": rec.mean(axis=-1),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "precision_per_class": prec,
        "recall_per_class": rec,
        "total": total,
    }


@dataclass
class RocGroups:
    """p(TB) scores grouped by distinct value, highest first (shared by every resample)."""

    order: np.ndarray  # image indices sorted by descending score
    starts: np.ndarray  # start of each tie group in ``order``
    values: np.ndarray  # the score of each group (descending)
    y_sorted: np.ndarray  # 1 = TB, in ``order``

    @staticmethod
    def build(scores: np.ndarray, y_tb: np.ndarray) -> RocGroups:
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")
        s = scores[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        return RocGroups(order, starts, s[starts], np.asarray(y_tb, dtype=np.float64)[order])

    def cumulative(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weighted TP and FP counts (…, G+1) for thresholds +inf, values[0], values[1], …"""
        n = self.order.shape[0]
        w = np.ones(n) if weights is None else np.take(np.asarray(weights, np.float64), self.order, axis=-1)
        pos = np.add.reduceat(w * self.y_sorted, self.starts, axis=-1)
        neg = np.add.reduceat(w * (1.0 - self.y_sorted), self.starts, axis=-1)
        zero = np.zeros((*pos.shape[:-1], 1))
        return (
            np.concatenate([zero, np.cumsum(pos, axis=-1)], axis=-1),
            np.concatenate([zero, np.cumsum(neg, axis=-1)], axis=-1),
        )


def roc_from_cumulative(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tpr, fpr, auc) from cumulative counts (…, G+1); auc NaN when a class is absent."""
    p = tp[..., -1:]
    n = fp[..., -1:]
    tpr = _div(tp, p)
    fpr = _div(fp, n)
    auc = np.sum(np.diff(fpr, axis=-1) * (tpr[..., 1:] + tpr[..., :-1]) / 2.0, axis=-1)
    return tpr, fpr, auc


def operating_points_from_cumulative(
    tp, fp, spec_target: float = SPEC_TARGET, sens_target: float = SENS_TARGET
):
    """Indices and values of the two screening operating points (vectorised over leading axes).

    Returns ``(i_ss, sens_at_spec, spec_there, i_sp, spec_at_sens, sens_there)``; the index refers
    to the cumulative arrays (0 = threshold +inf, g+1 = group g).
    """
    p = tp[..., -1:]
    n = fp[..., -1:]
    sens = _div(tp, p)
    spec = 1.0 - _div(fp, n)
    # sensitivity at specificity ≥ target; ties → higher specificity (key = sens + tiny·spec)
    feas = spec >= spec_target - 1e-12
    key = np.where(feas, sens * 2.0 + spec * 1e-9, -np.inf)
    i_ss = np.argmax(key, axis=-1)
    ok_ss = np.take_along_axis(key, i_ss[..., None], -1)[..., 0] > -np.inf
    sens_ss = np.where(ok_ss, np.take_along_axis(sens, i_ss[..., None], -1)[..., 0], np.nan)
    spec_ss = np.where(ok_ss, np.take_along_axis(spec, i_ss[..., None], -1)[..., 0], np.nan)
    feas = sens >= sens_target - 1e-12
    key = np.where(feas, spec * 2.0 + sens * 1e-9, -np.inf)
    i_sp = np.argmax(key, axis=-1)
    ok_sp = np.take_along_axis(key, i_sp[..., None], -1)[..., 0] > -np.inf
    spec_sp = np.where(ok_sp, np.take_along_axis(spec, i_sp[..., None], -1)[..., 0], np.nan)
    sens_sp = np.where(ok_sp, np.take_along_axis(sens, i_sp[..., None], -1)[..., 0], np.nan)
    return i_ss, sens_ss, spec_ss, i_sp, spec_sp, sens_sp


def least_int(pred, guess: np.ndarray) -> np.ndarray:
    """Least integer ``k`` with ``pred(k)`` (elementwise) for a predicate monotone in ``k``, ``guess``
    within ±2: the exact integer bound of a float ratio test such as ``k / n >= t``."""
    out = guess + 3
    for d in (2, 1, 0, -1, -2):
        k = guess + d
        out = np.where(pred(k), k, out)
    return out


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)``: the sorted distinct values (without the ``numpy.ma`` import it triggers)."""
    s = np.sort(a)
    keep = np.ones(s.shape, bool)
    keep[1:] = s[1:] != s[:-1]
    return s[keep]


def downsample_curve(n_points: int, max_points: int = 500) -> np.ndarray:
    """Indices of at most ``max_points`` points along a curve, first and last always kept."""
    if n_points <= max_points:
        return np.arange(n_points)
    return sorted_unique(np.round(np.linspace(0, n_points - 1, max_points)).astype(int))


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


class ClassificationEval:
    """Classification protocol for one prediction set; ``point()`` and ``samples(counts)``."""

    def __init__(
        self,
        probs: np.ndarray,
        y_true: np.ndarray,
        spec_target: float = SPEC_TARGET,
        sens_target: float = SENS_TARGET,
    ):
        self.probs = np.asarray(probs, dtype=np.float64)
        self.y_true = np.asarray(y_true, dtype=np.int64)
        self.y_pred = np.argmax(self.probs, axis=1)
        self.y_tb = (self.y_true == TB).astype(np.float64)
        self.score = self.probs[:, TB]
        self.groups = RocGroups.build(self.score, self.y_tb)
        self.spec_target, self.sens_target = spec_target, sens_target

    def point(self, max_roc_points: int = 500) -> tuple[dict, dict]:
        """(classification dict, operating_points dict) for the full image set."""
        conf = confusion_weighted(self.y_true, self.y_pred)
        m = metrics_from_confusion(conf)
        tp, fp = self.groups.cumulative()
        tpr, fpr, auc = roc_from_cumulative(tp, fp)
        n = float(m["total"])
        cls = {
            "n_images": int(n),
            "n_tb": int(self.y_tb.sum()),
            "accuracy": _f(m["accuracy"]),
            "auc": _f(auc),
            "sensitivity": _f(m["sensitivity"]),
            "specificity": _f(m["specificity"]),
            "ap": _f(m["ap"]),
            "ar": _f(m["ar"]),
            "f1": _f(m["f1"]),
            "confusion": conf.astype(int).tolist(),
            "tp": int(m["tp"]),
            "tn": int(m["tn"]),
            "fp": int(m["fp"]),
            "fn": int(m["fn"]),
            "tp_share": _f(m["tp"] / n),
            "tn_share": _f(m["tn"] / n),
            "fp_share": _f(m["fp"] / n),
            "fn_share": _f(m["fn"] / n),
            "predicted_tb_share": _f((m["tp"] + m["fp"]) / n),
            "precision_per_class": [float(v) for v in m["precision_per_class"]],
            "recall_per_class": [float(v) for v in m["recall_per_class"]],
        }
        thr = np.r_[np.inf, self.groups.values]
        keep = downsample_curve(thr.shape[0], max_roc_points)
        cls["roc"] = {
            "fpr": [_f(v) for v in fpr[keep]],
            "tpr": [_f(v) for v in tpr[keep]],
            "thresholds": [_f(v) for v in thr[keep]],
        }  # +inf (first point) → null
        i_ss, s_ss, sp_ss, i_sp, sp_sp, s_sp = operating_points_from_cumulative(
            tp, fp, self.spec_target, self.sens_target
        )
        ops = {
            "sensitivity_at_specificity": {
                "target_specificity": self.spec_target,
                "sensitivity": _f(s_ss),
                "specificity": _f(sp_ss),
                "threshold": _f(thr[i_ss]) if np.isfinite(s_ss) else None,
            },
            "specificity_at_sensitivity": {
                "target_sensitivity": self.sens_target,
                "specificity": _f(sp_sp),
                "sensitivity": _f(s_sp),
                "threshold": _f(thr[i_sp]) if np.isfinite(sp_sp) else None,
            },
        }
        return cls, ops

    def samples(
        self, counts: np.ndarray, chunk_elems: int = 1 << 17
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-resample metrics for bootstrap ``counts`` (B, N) → dicts of (B,) arrays.

        Resamples are independent rows, so they are scored in blocks of ``chunk_elems`` / N rows
        (the ~20 passes over each block then run in cache instead of over B × N arrays); the
        numbers do not depend on the block size.
        """
        counts = np.asarray(counts)
        step = max(1, chunk_elems // max(1, counts.shape[-1]))
        if counts.ndim != 2 or counts.shape[0] <= step:
            return self._samples(counts)
        parts = [self._samples(counts[lo : lo + step]) for lo in range(0, counts.shape[0], step)]
        return _concat_trees([c for c, _ in parts]), _concat_trees([o for _, o in parts])

    def _samples(self, counts: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if np.issubdtype(np.asarray(counts).dtype, np.integer):
            auc, s_ss, sp_sp = self._roc_samples_int(np.asarray(counts))
            m = metrics_from_confusion(confusion_weighted(self.y_true, self.y_pred, counts))
        else:
            w = np.asarray(counts, dtype=np.float64)
            m = metrics_from_confusion(confusion_weighted(self.y_true, self.y_pred, w))
            tp, fp = self.groups.cumulative(w)
            _, _, auc = roc_from_cumulative(tp, fp)
            _, s_ss, _, _, sp_sp, _ = operating_points_from_cumulative(
                tp, fp, self.spec_target, self.sens_target
            )
        cls = {k: m[k] for k in ("accuracy", "sensitivity", "specificity", "ap", "ar", "f1")}
        cls["auc"] = auc
        ops = {
            "sensitivity_at_specificity": {"sensitivity": s_ss},
            "specificity_at_sensitivity": {"specificity": sp_sp},
        }
        return cls, ops

    def _roc_samples_int(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """AUC and the two operating points for integer ``counts`` (B, N), in integer arithmetic.

        The same numbers as :func:`roc_from_cumulative` / :func:`operating_points_from_cumulative`
        on the weighted cumulative counts, without their (B, G) float passes: the trapezoidal
        area is Σ_g neg_g·(TP_g − pos_g/2) / (P·N) with integer sums (one rounding instead of one
        per group, so it may differ from the float trapezoid in the last bits); sensitivity is
        nondecreasing and specificity nonincreasing along the thresholds, so the best sensitivity
        with specificity ≥ target is the one at the last feasible threshold and the best
        specificity with sensitivity ≥ target the one at the first — counts of the cumulated
        integers below the exact integer bound of each target.
        """
        g = self.groups
        ws = np.take(counts, g.order, axis=-1)
        y = g.y_sorted.astype(ws.dtype)
        pos = ws * y
        neg = ws - pos
        if g.starts.size != g.order.size:  # tied scores: sum each tie group
            pos = np.add.reduceat(pos, g.starts, axis=-1)
            neg = np.add.reduceat(neg, g.starts, axis=-1)
        tp = np.cumsum(pos, axis=-1)
        fp = np.cumsum(neg, axis=-1)
        p = tp[:, -1].astype(np.float64)
        n = fp[:, -1].astype(np.float64)
        ok = (p > 0) & (n > 0)
        sp, sn = np.where(ok, p, 1.0), np.where(ok, n, 1.0)
        area2 = 2 * np.multiply(neg, tp, dtype=np.int64).sum(axis=-1)
        if g.starts.size != g.order.size:
            area2 -= np.multiply(neg, pos, dtype=np.int64).sum(axis=-1)
        auc = np.where(ok, area2 / (2.0 * sp * sn), np.nan)
        zero = np.zeros((tp.shape[0], 1), tp.dtype)
        tp0, fp0 = np.concatenate([zero, tp], axis=-1), np.concatenate([zero, fp], axis=-1)
        rows = np.arange(tp.shape[0])
        # last threshold with 1 − FP/N ≥ spec_target: FP ≤ f_max (least FP failing, minus one)
        t_spec = self.spec_target - 1e-12
        f_fail = least_int(lambda k: ~(1.0 - k / sn >= t_spec), np.floor((1.0 - t_spec) * sn))
        i_ss = (fp0 < f_fail[:, None]).sum(axis=-1) - 1
        s_ss = np.where(ok & (i_ss >= 0), tp0[rows, i_ss] / sp, np.nan)
        # first threshold with TP/P ≥ sens_target: #{thresholds with TP < t_min}
        t_sens = self.sens_target - 1e-12
        t_min = least_int(lambda k: k / sp >= t_sens, np.ceil(t_sens * sp))
        i_sp = np.minimum((tp0 < t_min[:, None]).sum(axis=-1), tp0.shape[1] - 1)
        sp_sp = np.where(ok & (tp0[:, -1] >= t_min), 1.0 - fp0[rows, i_sp] / sn, np.nan)
        return auc, s_ss, sp_sp


def _concat_trees(trees: list[dict]) -> dict:
    """Nested dicts of (b,) arrays → one dict of the arrays concatenated in order."""
    return {
        k: _concat_trees([t[k] for t in trees])
        if isinstance(v, dict)
        else np.concatenate([t[k] for t in trees])
        for k, v in trees[0].items()
    }


#: Named decision rules of ``tbx screen`` (``RUN/operating_points.json``): ``sens90`` = the best
#: specificity at sensitivity ≥ 90 %, ``spec70`` = the best sensitivity at specificity ≥ 70 %
#: (the WHO triage TPP's two constraints), ``argmax`` = the paper's arg-max rule (no threshold).
OPERATING_POINTS = ("sens90", "spec70", "argmax")


def named_operating_points(classification: dict, operating_points: dict) -> dict[str, dict]:
    """``sens90`` / ``spec70`` / ``argmax`` from :meth:`ClassificationEval.point`'s two dicts (or
    the ``classification`` / ``operating_points`` of a ``tbx bench`` result): each point's
    ``threshold`` on p(TB) (rule: TB if p(TB) ≥ t; None for ``argmax``, or when no threshold
    meets the target), and its ``sensitivity`` / ``specificity`` on the evaluated set."""
    a = operating_points["specificity_at_sensitivity"]
    b = operating_points["sensitivity_at_specificity"]
    return {
        "sens90": {
            "rule": f"p_tb >= threshold, sensitivity >= {a['target_sensitivity']:.2f}",
            "threshold": a["threshold"],
            "sensitivity": a["sensitivity"],
            "specificity": a["specificity"],
        },
        "spec70": {
            "rule": f"p_tb >= threshold, specificity >= {b['target_specificity']:.2f}",
            "threshold": b["threshold"],
            "sensitivity": b["sensitivity"],
            "specificity": b["specificity"],
        },
        "argmax": {
            "rule": "arg-max of (p_healthy, p_sick, p_tb) is TB (the paper)",
            "threshold": None,
            "sensitivity": classification["sensitivity"],
            "specificity": classification["specificity"],
        },
    }


def screening_thresholds(probs: np.ndarray, y_true: np.ndarray) -> dict[str, dict]:
    """The named operating points (:func:`named_operating_points`) of validation probabilities
    ``probs`` (N, 3) with labels ``y_true`` (N,) (0 healthy, 1 sick, 2 TB)."""
    cls, ops = ClassificationEval(probs, y_true).point(max_roc_points=2)
    return named_operating_points(cls, ops)
