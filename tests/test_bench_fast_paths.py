"""The evaluator's fast paths against their references: IoU bit for bit as pycocotools, matching
of crowded images as COCOeval.evaluateImg, the batched bootstrap = the per-resample loop, and a
`tbx bench` process that never imports torch."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tbx.bench.detection import GroundTruth, RowEval, bbox_iou, match
from tbx.bench.results_io import Detections, write_bbox_result, write_cls_result
from tbx.bench.stats import bootstrap_counts

REPO = Path(__file__).resolve().parents[1]


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.integers(0, 60, (n, 2)).astype(float) + rng.choice([0.0, 0.25, 0.5], (n, 2))
    wh = rng.integers(1, 40, (n, 2)).astype(float) + rng.choice([0.0, 0.5], (n, 2))
    return np.c_[xy, wh]


def test_bbox_iou_bit_identical_to_pycocotools():
    rng = np.random.default_rng(3)
    d, g = _boxes(rng, 400), _boxes(rng, 30)
    g[0] = d[0]  # identical boxes, touching edges and disjoint ones occur in this grid too
    ref = np.asarray(mask_utils.iou(d, g, [0] * len(g)))
    dd = np.repeat(d, len(g), axis=0)
    gg = np.tile(g, (len(d), 1))
    ours = bbox_iou(dd, gg).reshape(len(d), len(g))
    assert np.array_equal(ours, ref)  # not approx: the same float operations
    assert (ours == 0).any() and (ours == 1).any()


def _crowded(seed: int):
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, 31):
        images.append({"id": i, "file_name": f"tb/{i}.png", "width": 100, "height": 100})
        for b in _boxes(rng, int(rng.integers(0, 7))):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": b.tolist(),
                    "area": float(b[2] * b[3]),
                    "iscrowd": 0,
                }
            )
        for b in _boxes(rng, int(rng.integers(0, 40))):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": b.tolist(),
                    "score": float(rng.integers(1, 6)) / 5,
                }
            )  # many ties
    return images, anns, dets


def test_crowded_matching_equals_cocoeval_evaluate_img():
    for seed in (0, 1):
        images, anns, dets = _crowded(seed)
        gt = GroundTruth.build(
            (im["id"], [(*a["bbox"], a["category_id"]) for a in anns if a["image_id"] == im["id"]])
            for im in images
        )
        d = Detections(
            np.array([x["image_id"] for x in dets]),
            np.array([x["category_id"] for x in dets]),
            np.array([x["bbox"] for x in dets], float),
            np.array([x["score"] for x in dets]),
        )
        for cat in (1, 2):
            m = match(gt, d, {cat}, {cat})
            with contextlib.redirect_stdout(io.StringIO()):
                cg = COCO()
                cg.dataset = {
                    "images": images,
                    "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                }
                cg.createIndex()
                e = COCOeval(cg, cg.loadRes([x for x in dets if x["category_id"] == cat]), "bbox")
                e.params.catIds = [cat]
                e.evaluate()
            # evalImgs for area "all": per image, detections by score → concatenate in image order,
            # then the global stable sort on −score (COCOeval.accumulate)
            evs = [ev for ev in e.evalImgs if ev is not None and ev["aRng"] == [0, 1e10]]
            evs.sort(key=lambda ev: ev["image_id"])
            scores = np.concatenate([ev["dtScores"] for ev in evs])
            order = np.argsort(-scores, kind="mergesort")
            tp = np.concatenate([ev["dtMatches"] > 0 for ev in evs], axis=1)[:, order]
            assert np.array_equal(m.tp, tp), (seed, cat)
            assert np.array_equal(m.score, scores[order])


def test_batched_bootstrap_equals_per_resample_loop():
    images, anns, dets = _crowded(5)
    gt = GroundTruth.build(
        (im["id"], [(*a["bbox"], 1) for a in anns if a["image_id"] == im["id"]]) for im in images
    )
    d = Detections(
        np.array([x["image_id"] for x in dets]),
        np.ones(len(dets), int),
        np.array([x["bbox"] for x in dets], float),
        np.array([x["score"] for x in dets]),
    )
    m = match(gt, d, None, None, iou_thrs=np.r_[np.linspace(0.5, 0.95, 10), 0.1])
    n = len(images)
    img_in = np.ones(n)
    det_keep = (np.arange(n) % 3 != 0).astype(float)  # an all-cxr-like filter
    counts = bootstrap_counts(n, 64, seed=2)
    ev = RowEval(m, img_in, det_keep)
    assert ev._fast
    fast = ev.samples(counts)  # integer counts → the batched path
    ev._fast = False
    slow = ev.samples(counts.astype(np.float64) + 0.0)  # the per-resample COCOeval-style loop
    for k in ("ap", "ap50", "ar100"):
        np.testing.assert_allclose(fast[k], slow[k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast["froc"]["mean"], slow["froc"]["mean"], rtol=0, atol=1e-12)
    assert np.isfinite(fast["ap"]).all()


def test_bench_process_never_imports_torch(tmp_path):
    gt = {
        "images": [
            {"id": 1, "file_name": "tb/a.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "health/b.png", "width": 64, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "Obsolete"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    write_cls_result(tmp_path / "pred" / "cls_result.txt", np.array([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]]))
    write_bbox_result(
        tmp_path / "pred" / "bbox_result.json",
        [{"image_id": 1, "category_id": 1, "bbox": [6, 5, 20, 20], "score": 0.9}],
    )
    code = (
        "import sys\n"
        "from tbx.cli.main import main\n"
        f"rc = main(['bench', '--gt', {str(tmp_path / 'gt.json')!r}, '--pred', {str(tmp_path / 'pred')!r},"
        f" '--bootstrap', '20', '--json', {str(tmp_path / 'out' / 'r.json')!r}])\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'tbx.models', 'tbx.engine', 'tbx.data.dataset')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr
    res = json.loads((tmp_path / "out" / "r.json").read_text())
    assert abs(res["detection"]["tb_only"]["agnostic"]["ap50"] - 1.0) < 1e-12  # one box, found


def test_label_from_path_fast_split_equals_pure_posix_path_rules():
    """The plain-split fast path of label_from_path gives what the PurePosixPath parse gives."""
    from pathlib import PurePosixPath

    from tbx.data import layout
    from tbx.errors import TbxError

    def reference(f):
        parts = PurePosixPath(f.replace("\\", "/")).parts
        parts = parts[1:] if parts and parts[0] == layout.IMGS else parts
        if parts and parts[0] in layout.CLASS_FOLDERS and len(parts) >= 2:
            return layout.CLASS_FOLDERS[parts[0]], "tbx11k"
        if parts and parts[0] == "extra" and len(parts) >= 3:
            stem = PurePosixPath(parts[-1]).stem
            tb = stem.lower().startswith("p") if parts[1] == "da+db" else stem.endswith("_1")
            return ("tb" if tb else "healthy"), layout.extra_source(stem, parts[1])
        return "error"

    rng = np.random.default_rng(0)
    words = [
        "tb",
        "health",
        "sick",
        "extra",
        "da+db",
        "mc+shenzhen",
        "imgs",
        "x.png",
        "p1.png",
        ".",
        "..",
        "",
        "a.",
        ".b",
        "CHNCXR_0001_1.png",
        "px1.jpg",
        "n\\1.png",
    ]
    cases = ["", ".", "/tb/a.png", "./tb/a.png", "tb//a.png", "tb/./a.png", "tb/a.png/", "tb/"]
    for _ in range(3000):
        body = "/".join(rng.choice(words, int(rng.integers(1, 5))).tolist())
        cases.append(str(rng.choice(["", "/", "./"])) + body + str(rng.choice(["", "/", "/."])))
    for c in cases:
        try:
            got = layout.label_from_path(c)
        except TbxError:
            got = "error"
        assert got == reference(c), c
