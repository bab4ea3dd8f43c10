"""Speed of `tbx bench` on an all_test-sized fixture, against plain pycocotools.

Builds a 3,302-image fixture (2,800 TBX11K images — 1,200 healthy, 1,200 sick, 400 TB with the
real boxes of ``TBX11K_train.json``, 10 of them turned into uncertain-type TB — plus 502
extra-dataset images) with ~30 detections per image (perturbed ground-truth boxes and false
positives) and times:

1. ``evaluate(--mode both)`` (point estimates, all six detection rows, curves, error analysis);
2. ``evaluate(--mode both --bootstrap 1000)``;
3. the reference: what a plain pycocotools bootstrap costs — COCOeval (evaluate + accumulate)
   from scratch per resample for the six rows, timed on a few resamples and extrapolated to 1000.

Run:  .venv/bin/python benchmarks/bench_eval.py [--boot 1000] [--ref-resamples 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
META = REPO.parent / "shared" / "data" / "tbx11k-meta" / "TBX11K_train.json"


def make_fixture(out: Path, boxes_per_image: int = 30, seed: int = 0, meta: Path = META) -> tuple[Path, Path]:
    """Write ``out/gt.json`` and ``out/pred/{cls_result.txt,bbox_result.json}``; return both paths."""
    from tbx.bench.results_io import write_bbox_result, write_cls_result

    rng = np.random.default_rng(seed)
    src = json.loads(Path(meta).read_text())
    anns: dict[int, list] = {}
    for a in src["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    tb_imgs = [im for im in src["images"] if im["file_name"].startswith("tb/") and im["id"] in anns][:400]
    images, annotations = [], []
    iid = 0

    def add(fn, boxes=()):
        nonlocal iid
        iid += 1
        images.append({"id": iid, "file_name": fn, "width": 512, "height": 512})
        for b, c in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": iid, "category_id": c,
                                "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0})

    order = rng.permutation(2800)  # interleave the classes like a real test list
    kinds = ["h"] * 1200 + ["s"] * 1200 + ["t"] * 400
    ti = 0
    for k in order:
        kind = kinds[k]
        if kind == "h":
            add(f"health/h{k:05d}.png")
        elif kind == "s":
            add(f"sick/s{k:05d}.png")
        else:
            im = tb_imgs[ti]
            unc = ti < 10  # uncertain-type TB (category 3), test-set only in the real data
            add(f"tb/t{k:05d}.png", [(a["bbox"], 3 if unc else a["category_id"]) for a in anns[im["id"]]])
            ti += 1
    for j in range(502):
        if j % 2:
            add(f"extra/mc+shenzhen/val/CHNCXR_{j:04d}_{j % 4 // 2}.png")
        else:
            add(f"extra/da+db/val/{'p' if j % 4 == 0 else 'n'}{j:04d}.png")
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
                         {"id": 2, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
                         {"id": 3, "name": "PulmonaryTuberculosis", "supercategory": "Tuberculosis"}]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gt.json").write_text(json.dumps(gt))
    # classification: noisy softmax leaning to the true class
    from tbx.data.layout import label_from_path

    y = np.array([{"healthy": 0, "sick": 1, "tb": 2}[label_from_path(im["file_name"])[0]] for im in images])
    logits = rng.normal(0, 1.0, (len(images), 3))
    logits[np.arange(len(images)), y] += 2.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # detections: jittered GT boxes (sometimes wrong type) + false positives
    by_img: dict[int, list] = {}
    for a in annotations:
        by_img.setdefault(a["image_id"], []).append(a)
    dets = []
    for im in images:
        n_tp = 0
        for a in by_img.get(im["id"], []):
            for _ in range(int(rng.integers(1, 4))):
                x, yy, w, h = a["bbox"]
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                cat = a["category_id"] if a["category_id"] != 3 else int(rng.integers(1, 3))
                if rng.random() < 0.2:
                    cat = 3 - cat
                dets.append({"image_id": im["id"], "category_id": cat,
                             "bbox": [x + j[0], yy + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                             "score": float(rng.beta(4, 2))})
                n_tp += 1
        for _ in range(max(boxes_per_image - n_tp, 0)):
            w, h = rng.uniform(20, 200, 2)
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(rng.uniform(0, 512 - w)), float(rng.uniform(0, 512 - h)), float(w),
                                  float(h)],
                         "score": float(rng.beta(1.5, 5))})
    pred = out / "pred"
    write_cls_result(pred / "cls_result.txt", probs)
    write_bbox_result(pred / "bbox_result.json", dets)
    return out / "gt.json", pred


def _coco_rows(gt_path: Path, pred: Path, keep_uncertain: bool = False):
    """The six protocol rows as (gt dict, dets list, image ids, category remap) for pycocotools."""
    from tbx.bench.results_io import read_cls_result
    from tbx.data.coco import read_coco

    gt = json.loads(gt_path.read_text())
    recs = read_coco(gt_path)
    probs = read_cls_result(pred / "cls_result.txt", len(recs))
    dets = json.loads((pred / "bbox_result.json").read_text())
    tbx = [r for r in recs if r.source == "tbx11k"]
    pred_tb = {r.image_id for r, p in zip(recs, probs) if p.argmax() == 2}
    rows = []
    for mode in ("all_cxr", "tb_only"):
        for row in ("agnostic", "active", "latent"):
            ids = [r.image_id for r in tbx if mode == "all_cxr" or r.label == "tb"]
            if row != "agnostic" and not keep_uncertain:
                unc = {r.image_id for r in tbx if r.tb_type == "uncertain"}
                ids = [i for i in ids if i not in unc]
            cat = {"agnostic": None, "active": 1, "latent": 2}[row]
            g = copy.deepcopy(gt)
            if cat is None:
                for a in g["annotations"]:
                    a["category_id"] = 1
            dd = [dict(d) for d in dets if (cat is None or d["category_id"] == cat)
                  and (mode == "tb_only" or d["image_id"] in pred_tb)]
            if cat is None:
                for d in dd:
                    d["category_id"] = 1
            rows.append((g, dd, ids, cat or 1))
    return rows


def coco_ap(g: dict, dets: list, img_ids: list, cat: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = g
        cg.createIndex()
        cd = cg.loadRes(dets) if dets else COCO()
        e = COCOeval(cg, cd, "bbox")
        e.params.imgIds = img_ids
        e.params.catIds = [cat]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0]), float(e.stats[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--ref-resamples", type=int, default=3)
    ap.add_argument("--boxes", type=int, default=30)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from tbx.bench.protocol import BenchConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gt_path, pred = make_fixture(Path(tmp), args.boxes)
        n_det = len(json.loads((pred / "bbox_result.json").read_text()))
        print(f"fixture: 3302 images, {n_det} detections ({time.perf_counter() - t0:.1f} s to build)")

        # wall time, and CPU time of this process (less sensitive to a shared, loaded machine)
        t0, c0 = time.perf_counter(), time.process_time()
        res = evaluate(gt_path, pred, BenchConfig(mode="both"))
        t_point, c_point = time.perf_counter() - t0, time.process_time() - c0
        print(f"tbx bench --mode both:                 {t_point:7.2f} s wall, {c_point:6.2f} s CPU "
              "(target ≤ 3 s)")

        t0, c0 = time.perf_counter(), time.process_time()
        evaluate(gt_path, pred, BenchConfig(mode="both", bootstrap=args.boot, seed=0))
        t_boot, c_boot = time.perf_counter() - t0, time.process_time() - c0
        print(f"tbx bench --mode both --bootstrap {args.boot}: {t_boot:7.2f} s wall, {c_boot:6.2f} s CPU "
              "(target ≤ 60 s)")

        # reference: plain pycocotools, one COCOeval per row and per resample
        rows = _coco_rows(gt_path, pred)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = [coco_ap(*r) for r in rows]
        t_ref_point, c_ref_point = time.perf_counter() - t0, time.process_time() - c0
        ours = [(res["detection"][m][r]["ap"], res["detection"][m][r]["ap50"])
                for m in ("all_cxr", "tb_only") for r in ("agnostic", "active", "latent")]
        err = max(abs(a - b) for x, y in zip(ref, ours) for a, b in zip(x, y))
        print(f"pycocotools, six rows once:            {t_ref_point:7.2f} s wall, {c_ref_point:6.2f} s CPU "
              f"(max |AP diff| vs tbx = {err:.2e})")
        rng = np.random.default_rng(0)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.ref_resamples):
            for g, dd, ids, cat in rows:
                # resample images with replacement: duplicated images get fresh ids
                pick = rng.choice(np.array(ids), size=len(ids), replace=True)
                gi = {im["id"]: im for im in g["images"]}
                ga = {}
                for a in g["annotations"]:
                    ga.setdefault(a["image_id"], []).append(a)
                da = {}
                for d in dd:
                    da.setdefault(d["image_id"], []).append(d)
                new_g = {"images": [], "annotations": [], "categories": g["categories"]}
                new_d = []
                for k, i in enumerate(pick.tolist()):
                    new_g["images"].append({**gi[i], "id": k + 1})
                    for a in ga.get(i, []):
                        new_g["annotations"].append({**a, "id": len(new_g["annotations"]) + 1,
                                                     "image_id": k + 1})
                    new_d += [{**d, "image_id": k + 1} for d in da.get(i, [])]
                coco_ap(new_g, new_d, list(range(1, len(pick) + 1)), cat)
        t_ref = (time.perf_counter() - t0) / args.ref_resamples * args.boot
        c_ref = (time.process_time() - c0) / args.ref_resamples * args.boot
        print(f"pycocotools bootstrap (extrapolated from {args.ref_resamples} resamples to {args.boot}), "
              f"detection only: {t_ref:7.1f} s wall, {c_ref:7.1f} s CPU")
        print(f"ratios (wall / CPU): point run {t_ref_point / t_point:.1f}x / {c_ref_point / c_point:.1f}x "
              f"faster than pycocotools' six rows; bootstrap {t_ref / t_boot:.1f}x / {c_ref / c_boot:.1f}x "
              "faster than a COCOeval-per-resample loop")


if __name__ == "__main__":
    main()
