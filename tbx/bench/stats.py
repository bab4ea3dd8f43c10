"""Uncertainty: image-level bootstrap and DeLong's test for ROC AUC.

Bootstrap
    Images are resampled with replacement; a resample is represented by its *counts* (how many
    times each image was drawn), so every metric can weight images instead of copying data, and
    the same resample is shared by every metric (and by both prediction sets in a paired
    comparison).  Percentile intervals; deterministic for a seed (``numpy.random.default_rng``).

DeLong
    Fast DeLong (Sun & Xu, "Fast implementation of DeLong's algorithm for comparing the areas under
    correlated receiver operating characteristic curves", IEEE SPL 2014): AUCs and their covariance
    from midranks in O(k·n log n) instead of the O(n²) pairwise structural components of DeLong,
    DeLong & Clarke-Pearson (Biometrics 1988).  Variance uses the unbiased (n−1) sample
    covariances of the structural components, as in DeLong's paper and pROC.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_N = NormalDist()


# ------------------------------------------------------------------------------------ bootstrap
def bootstrap_counts(n: int, n_boot: int, seed: int, block_elems: int = 1 << 18) -> np.ndarray:
    """(n_boot, n) int32 counts: resample ``b`` draws image ``i`` ``counts[b, i]`` times.

    Resample ``b`` is the ``b``-th run of ``n`` uniform draws (with replacement) from one
    ``numpy.random.default_rng(seed)`` stream, so the counts are deterministic for ``seed`` and row
    ``b`` is identical whatever ``n_boot`` is (a 100-resample run is a prefix of a 1000-resample
    run).  Drawn in blocks of about ``block_elems`` draws (int32 draws continue the stream exactly
    across blocks), each block counted by one flat ``bincount``.
    """
    out = np.zeros((n_boot, n), dtype=np.int32)
    if n == 0 or n_boot == 0:
        return out
    rng = np.random.default_rng(seed)
    step = max(1, block_elems // n)
    for lo in range(0, n_boot, step):
        k = min(step, n_boot - lo)
        idx = rng.integers(0, n, size=(k, n), dtype=np.int32)
        flat = idx + (np.arange(k, dtype=np.int64) * n)[:, None]
        out[lo : lo + k] = np.bincount(flat.ravel(), minlength=k * n).reshape(k, n)
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap ``samples`` (NaNs — undefined resamples — are dropped)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (None, None)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [100 * a, 100 * (1 - a)])
    return (float(lo), float(hi))


def ci_tree(samples, level: float):
    """Map a nested dict/list of per-resample arrays to the same tree of ``[lo, hi]`` pairs."""
    if isinstance(samples, dict):
        return {k: ci_tree(v, level) for k, v in samples.items()}
    if isinstance(samples, list):
        return [ci_tree(v, level) for v in samples]
    lo, hi = percentile_ci(samples, level)
    return [lo, hi]


# --------------------------------------------------------------------------------------- DeLong
def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion ``k / n`` (None, None for ``n = 0``)."""
    if n <= 0:
        return None, None
    z = _N.inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based; tied values share the mean of their ranks) along the last axis."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
        before = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        return (before + (cnt + 1) / 2.0)[inv]
    return np.stack([midrank(row) for row in x])


def fast_delong(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for k score vectors on the same cases.

    ``scores``: (k, n) or (n,); ``y``: (n,) binary (1 = positive).  Returns ``(aucs (k,),
    cov (k, k))``.  Requires at least two positives and two negatives.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(y).astype(bool)
    pos, neg = s[:, y], s[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positive and two negative cases")
    k = s.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = midrank(pos[r])
        ty[r] = midrank(neg[r])
        tz[r] = midrank(np.concatenate([pos[r], neg[r]]))
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v10 = (tz[:, :m] - tx) / n  # structural components of the positives (k, m)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # of the negatives (k, n)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_ci(scores: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict[str, float | None]:
    """AUC with its DeLong standard error and Wald interval (clipped to [0, 1])."""
    try:
        aucs, cov = fast_delong(scores, y)
    except ValueError:
        return {"auc": None, "se": None, "ci": [None, None]}
    auc, var = float(aucs[0]), float(max(cov[0, 0], 0.0))
    se = math.sqrt(var)
    z = _N.inv_cdf(0.5 + level / 2.0)
    return {"auc": auc, "se": se, "ci": [max(0.0, auc - z * se), min(1.0, auc + z * se)]}


def delong_test(
    scores_a: np.ndarray, scores_b: np.ndarray, y: np.ndarray, level: float = 0.95
) -> dict[str, float | None]:
    """Paired DeLong test of AUC(a) − AUC(b) on the same cases: difference, SE, CI, z, p."""
    try:
        aucs, cov = fast_delong(np.stack([scores_a, scores_b]), y)
    except ValueError:
        return {
            "auc_a": None,
            "auc_b": None,
            "diff": None,
            "se": None,
            "ci": [None, None],
            "z": None,
            "p": None,
        }
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    zq = _N.inv_cdf(0.5 + level / 2.0)
    if se > 0:
        z = diff / se
        p = 2.0 * _N.cdf(-abs(z))
    else:  # identical rankings: no difference to test
        z, p = 0.0, 1.0
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "ci": [diff - zq * se, diff + zq * se],
        "z": float(z),
        "p": p,
    }
