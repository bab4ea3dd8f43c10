"""Classification metrics (docs/protocol.md §4.2) against scikit-learn, the paper's counts, brute force and
a slow O(n²) DeLong; bootstrap determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tbx.bench.classification import ClassificationEval, confusion_weighted, metrics_from_confusion
from tbx.bench.stats import bootstrap_counts, ci_tree, delong_ci, delong_test, fast_delong, midrank


def random_fixture(seed: int, n: int = 400, quantise: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.45, 0.4, 0.15])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += rng.uniform(0.5, 2.0)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if quantise:  # many ties in p(TB)
        p[:, 2] = np.round(p[:, 2], 1)
    return y, p


@pytest.mark.parametrize("seed,quantise", [(0, False), (1, True), (2, False)])
def test_against_sklearn(seed, quantise):
    y, p = random_fixture(seed, quantise=quantise)
    cls, _ = ClassificationEval(p, y).point()
    pred = p.argmax(1)
    yb, pb = (y == 2).astype(int), (pred == 2).astype(int)
    assert cls["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert cls["auc"] == pytest.approx(roc_auc_score(yb, p[:, 2]), abs=1e-12)
    assert cls["ap"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert cls["ar"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert cls["sensitivity"] == pytest.approx(recall_score(yb, pb), abs=1e-12)
    assert cls["specificity"] == pytest.approx(recall_score(1 - yb, 1 - pb), abs=1e-12)
    assert cls["f1"] == pytest.approx(f1_score(yb, pb), abs=1e-12)
    assert cls["confusion"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    tn, fp, fn, tp = confusion_matrix(yb, pb).ravel()
    assert (cls["tp"], cls["tn"], cls["fp"], cls["fn"]) == (tp, tn, fp, fn)
    assert cls["tp_share"] == pytest.approx(tp / len(y))
    # ROC points lie on sklearn's curve (same area by the trapezoid rule)
    fpr, tpr = np.array(cls["roc"]["fpr"]), np.array(cls["roc"]["tpr"])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and len(fpr) <= 500
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(yb, p[:, 2]), abs=1e-12)


def test_class_never_predicted_counts_zero_like_sklearn():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]
    )
    cls, _ = ClassificationEval(p, y).point()
    pred = p.argmax(1)
    assert cls["ap"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))


def test_paper_counts():
    """docs/protocol.md §4.2: TP 589, FN 58, FP 86, TN 2,569 → Sens 91.0, Spec 96.8."""
    conf = np.zeros((3, 3))
    conf[2, 2], conf[2, 0] = 589, 58  # TB images: 589 predicted TB, 58 not
    conf[0, 2], conf[0, 0] = 86, 2569  # non-TB images
    m = metrics_from_confusion(conf)
    assert round(100 * float(m["sensitivity"]), 1) == 91.0
    assert round(100 * float(m["specificity"]), 1) == 96.8
    # F1 = 2TP / (2TP + FP + FN) = 1178 / 1322 = 0.89107 — the paper quotes 89.0, the counts give 89.1
    assert float(m["f1"]) == pytest.approx(1178 / 1322, abs=1e-12)
    assert round(100 * float(m["f1"]), 1) == 89.1
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (589, 58, 86, 2569)


def brute_force_operating_points(score, yb, spec_t=0.7, sens_t=0.9):
    best_ss = (-1, -1, None)
    best_sp = (-1, -1, None)
    for thr in np.r_[np.inf, np.unique(score)]:
        pred = score >= thr
        sens = (pred & (yb == 1)).sum() / (yb == 1).sum()
        spec = (~pred & (yb == 0)).sum() / (yb == 0).sum()
        if spec >= spec_t and (sens, spec) > best_ss[:2]:
            best_ss = (sens, spec, thr)
        if sens >= sens_t and (spec, sens) > best_sp[:2]:
            best_sp = (spec, sens, thr)
    return best_ss, best_sp


@pytest.mark.parametrize("seed,quantise", [(3, False), (4, True)])
def test_operating_points_brute_force(seed, quantise):
    y, p = random_fixture(seed, quantise=quantise)
    _, ops = ClassificationEval(p, y).point()
    (s, sp, thr), (sp2, s2, thr2) = brute_force_operating_points(p[:, 2], (y == 2).astype(int))
    a, b = ops["sensitivity_at_specificity"], ops["specificity_at_sensitivity"]
    assert (a["sensitivity"], a["specificity"], a["threshold"]) == pytest.approx((s, sp, thr))
    assert (b["specificity"], b["sensitivity"], b["threshold"]) == pytest.approx((sp2, s2, thr2))
    # the threshold reproduces the reported numbers
    pred = p[:, 2] >= a["threshold"]
    assert ((pred & (y == 2)).sum() / (y == 2).sum()) == pytest.approx(a["sensitivity"])


def slow_delong(scores, y):
    """O(n²) DeLong (1988): structural components from the pairwise kernel ψ."""
    scores = np.atleast_2d(scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    v10, v01 = np.zeros((k, m)), np.zeros((k, n))
    aucs = np.zeros(k)
    for r in range(k):
        psi = (pos[r][:, None] > neg[r][None, :]) + 0.5 * (pos[r][:, None] == neg[r][None, :])
        aucs[r] = psi.mean()
        v10[r], v01[r] = psi.mean(axis=1), psi.mean(axis=0)
    s10 = np.array(
        [[np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1) for b in range(k)] for a in range(k)]
    )
    s01 = np.array(
        [[np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1) for b in range(k)] for a in range(k)]
    )
    return aucs, s10 / m + s01 / n


@pytest.mark.parametrize("quantise", [False, True])
def test_fast_delong_matches_slow(quantise):
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.3).astype(int)
    a = rng.normal(y * 1.0, 1.0)
    b = rng.normal(y * 0.6, 1.0) + 0.3 * a
    if quantise:
        a, b = np.round(a, 1), np.round(b, 1)
    aucs, cov = fast_delong(np.stack([a, b]), y)
    ref_aucs, ref_cov = slow_delong(np.stack([a, b]), y)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))
    d = delong_ci(a, y)
    assert d["ci"][0] < d["auc"] < d["ci"][1]
    t = delong_test(a, b, y)
    assert t["diff"] == pytest.approx(ref_aucs[0] - ref_aucs[1])
    assert t["se"] == pytest.approx(np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]))
    assert 0 <= t["p"] <= 1
    same = delong_test(a, a, y)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_midrank():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0])
    np.testing.assert_allclose(midrank(x), [4, 1, 4, 2, 4])


def test_weighted_metrics_equal_duplicated_data():
    """A bootstrap count c = the image appears c times (checked against sklearn on copies)."""
    y, p = random_fixture(6, n=200)
    ev = ClassificationEval(p, y)
    counts = bootstrap_counts(200, 3, seed=1)
    cls_s, ops_s = ev.samples(counts)
    for b in range(3):
        idx = np.repeat(np.arange(200), counts[b])
        yy, pp = y[idx], p[idx]
        pred = pp.argmax(1)
        assert cls_s["accuracy"][b] == pytest.approx(accuracy_score(yy, pred))
        assert cls_s["auc"][b] == pytest.approx(roc_auc_score(yy == 2, pp[:, 2]))
        assert cls_s["ap"][b] == pytest.approx(precision_score(yy, pred, average="macro", zero_division=0))
        assert cls_s["f1"][b] == pytest.approx(f1_score(yy == 2, pred == 2))
        (s, _, _), (sp, _, _) = brute_force_operating_points(pp[:, 2], (yy == 2).astype(int))
        assert ops_s["sensitivity_at_specificity"]["sensitivity"][b] == pytest.approx(s)
        assert ops_s["specificity_at_sensitivity"]["specificity"][b] == pytest.approx(sp)
    # confusion with weights = confusion of the copies
    idx = np.repeat(np.arange(200), counts[0])
    np.testing.assert_array_equal(
        confusion_weighted(y, p.argmax(1), counts[0]),
        confusion_matrix(y[idx], p[idx].argmax(1), labels=[0, 1, 2]),
    )


def test_bootstrap_deterministic_and_contains_point():
    y, p = random_fixture(7, n=500)
    ev = ClassificationEval(p, y)
    c1, c2 = bootstrap_counts(500, 200, seed=3), bootstrap_counts(500, 200, seed=3)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, bootstrap_counts(500, 200, seed=4))
    np.testing.assert_array_equal(bootstrap_counts(500, 50, seed=3), c1[:50])  # prefix-stable
    assert (c1.sum(1) == 500).all()
    ci = ci_tree(ev.samples(c1)[0], 0.95)
    point, _ = ev.point()
    for k in ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar", "f1"):
        lo, hi = ci[k]
        assert lo <= point[k] <= hi, k
    # the accuracy interval has the width of the binomial normal approximation (± 30 %)
    acc = point["accuracy"]
    expected = 2 * 1.96 * np.sqrt(acc * (1 - acc) / 500)
    assert 0.7 * expected < ci["accuracy"][1] - ci["accuracy"][0] < 1.3 * expected
