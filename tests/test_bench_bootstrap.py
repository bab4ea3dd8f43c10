"""The batched bootstrap of ``tbx bench`` against a naive one built from the documented semantics.

Naive: resample ``b`` = the ``b``-th run of ``n`` draws of ``numpy.random.default_rng(seed)`` (image
indices in the annotation file's order, with replacement); the drawn images are *copied* into a new
annotation file and prediction folder (duplicates get new ids and names) and scored by the point
path, one plain loop over resamples; the interval is the percentile interval of those scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from test_bench_classification import brute_force_operating_points, random_fixture
from test_bench_cli import make_case

from tbx.bench.classification import ClassificationEval
from tbx.bench.protocol import BenchConfig, evaluate
from tbx.bench.results_io import write_bbox_result, write_cls_result
from tbx.bench.stats import bootstrap_counts


def _copy(gt: dict, probs: np.ndarray, dets: list[dict], pick: np.ndarray, root: Path) -> tuple[Path, Path]:
    """The images ``pick`` (indices into ``gt['images']``, repeats allowed) as a new case under ``root``."""
    anns: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    by_img: dict[int, list[dict]] = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    images, new_anns, new_dets = [], [], []
    for k, i in enumerate(pick.tolist()):
        im = gt["images"][i]
        stem, ext = im["file_name"].rsplit(".", 1)
        nid = k + 1
        images.append({**im, "id": nid, "file_name": f"{stem}_c{k}.{ext}"})
        new_anns += [
            {**a, "id": len(new_anns) + j + 1, "image_id": nid} for j, a in enumerate(anns.get(im["id"], []))
        ]
        new_dets += [{**d, "image_id": nid} for d in by_img.get(im["id"], [])]
    root.mkdir(parents=True)
    (root / "gt.json").write_text(json.dumps({**gt, "images": images, "annotations": new_anns}))
    write_cls_result(root / "pred" / "cls_result.txt", probs[pick])
    write_bbox_result(root / "pred" / "bbox_result.json", new_dets)
    return root / "gt.json", root / "pred"


def _leaves(ci, point, path=()):
    """(path, [lo, hi], point-result getter path) for every interval of a CI tree."""
    if isinstance(ci, dict):
        for k, v in ci.items():
            yield from _leaves(v, point, (*path, k))
    elif ci and isinstance(ci[0], list):  # FROC sensitivities: one interval per rate
        for j, v in enumerate(ci):
            yield from _leaves(v, point, (*path, j))
    else:
        yield path, ci


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def test_bootstrap_ci_equals_naive_resampling_loop(tmp_path):
    (tmp_path / "case").mkdir()
    gt_path, pred, _ = make_case(tmp_path / "case", seed=4, n=60)
    gt = json.loads(gt_path.read_text())
    probs = np.loadtxt(pred / "cls_result.txt", ndmin=2)
    dets = json.loads((pred / "bbox_result.json").read_text())
    n, n_boot, seed = len(gt["images"]), 30, 5
    res = evaluate(gt_path, pred, BenchConfig(mode="both", bootstrap=n_boot, seed=seed))
    rng = np.random.default_rng(seed)
    points = []
    for b in range(n_boot):
        pick = rng.integers(0, n, size=n, dtype=np.int32)
        g, p = _copy(gt, probs, dets, pick, tmp_path / f"r{b}")
        points.append(evaluate(g, p, BenchConfig(mode="both")))
    ci = {k: res["ci"][k] for k in ("classification", "operating_points", "detection")}
    n_checked = 0
    for path, (lo, hi) in _leaves(ci, res):
        vals = [_get(pt, path) for pt in points]
        vals = np.array([v for v in vals if v is not None], dtype=np.float64)
        if vals.size == 0:
            assert lo is None and hi is None, path
            continue
        ref_lo, ref_hi = np.percentile(vals, [2.5, 97.5])
        assert lo == pytest.approx(ref_lo, abs=1e-12), path
        assert hi == pytest.approx(ref_hi, abs=1e-12), path
        n_checked += 1
    # every metric family took part: 7 classification, 2 operating points, 6 rows × (3 + 7 + 1)
    assert n_checked == 7 + 2 + 6 * 11


def test_bootstrap_counts_blocks_continue_one_stream():
    """Blocked drawing = one draw of n indices per resample from one default_rng(seed) stream."""
    n, n_boot = 37, 23
    rng = np.random.default_rng(9)
    ref = np.stack(
        [np.bincount(rng.integers(0, n, size=n, dtype=np.int32), minlength=n) for _ in range(n_boot)]
    )
    for block in (1, 50, 37 * 4, 1 << 18):  # one resample per block … all in one
        np.testing.assert_array_equal(bootstrap_counts(n, n_boot, 9, block_elems=block), ref)


@pytest.mark.parametrize("quantise", [False, True])
def test_integer_count_samples_equal_copies(quantise):
    """The integer-count ROC path = sklearn / brute force on copied data; undefined → NaN."""
    y, p = random_fixture(8, n=150, quantise=quantise)
    ev = ClassificationEval(p, y)
    counts = bootstrap_counts(150, 6, seed=2)
    counts[0, y == 2] = 0  # no TB image drawn
    counts[1, y != 2] = 0  # no non-TB image drawn
    cls_s, ops_s = ev.samples(counts)
    sens = ops_s["sensitivity_at_specificity"]["sensitivity"]
    spec = ops_s["specificity_at_sensitivity"]["specificity"]
    assert np.isnan(cls_s["auc"][:2]).all() and np.isnan(sens[:2]).all() and np.isnan(spec[:2]).all()
    for b in range(2, 6):
        idx = np.repeat(np.arange(150), counts[b])
        yb, sc = (y[idx] == 2).astype(int), p[idx, 2]
        assert cls_s["auc"][b] == pytest.approx(roc_auc_score(yb, sc), abs=1e-12)
        (s, _, _), (sp, _, _) = brute_force_operating_points(sc, yb)
        assert sens[b] == pytest.approx(s, abs=1e-12)
        assert spec[b] == pytest.approx(sp, abs=1e-12)
    # the float-weight path (any weights) gives the same numbers
    cls_f, ops_f = ev.samples(counts.astype(np.float64))
    np.testing.assert_allclose(cls_s["auc"], cls_f["auc"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sens, ops_f["sensitivity_at_specificity"]["sensitivity"])
    np.testing.assert_array_equal(spec, ops_f["specificity_at_sensitivity"]["specificity"])


@pytest.mark.parametrize(("k", "n"), [(15, 20), (0, 12), (12, 12), (27, 40), (1, 3)])
def test_wilson_ci_equals_scipy(k, n):
    from scipy.stats import binomtest

    from tbx.bench.stats import wilson_ci

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert wilson_ci(0, 0) == (None, None)
