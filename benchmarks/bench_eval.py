"""Speed of `tbx bench` on an all_test-sized fixture, against faster-coco-eval and pycocotools.

Builds a 3,302-image fixture (2,800 TBX11K images — 1,200 healthy, 1,200 sick, 400 TB with the
real boxes of ``TBX11K_train.json``, 10 of them turned into uncertain-type TB — plus 502
extra-dataset images) with ~30 detections per image (perturbed ground-truth boxes and false
positives) and times, as whole processes, interleaved and repeated (median and min reported):

1. ``tbx bench --mode both`` (point estimates, all six detection rows, curves, error analysis);
2. the reference: a faster-coco-eval process computing the same six COCO rows (load both JSON
   files and the class file, the all-cxr filter, ``COCOeval_faster`` evaluate + accumulate +
   summarize per row — the least a user of the fastest peer has to run);
3. ``tbx bench --mode both --bootstrap 1000``;

checks that AP / AP50 of the six rows equal plain pycocotools' and faster-coco-eval's (max |Δ|),
and optionally extrapolates what a plain pycocotools bootstrap (COCOeval from scratch per resample)
would cost.  CPU time = user + system of the child process (less sensitive than wall time to a
shared, loaded machine); the ratios are the targets of issue 22.  Figures go to RESULTS.md.

Run:  python benchmarks/bench_eval.py [--repeats 5] [--boot 1000] [--ref-resamples 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import resource
import statistics
import subprocess
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
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": iid,
                    "category_id": c,
                    "bbox": list(b),
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                }
            )

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
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
            {"id": 2, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
            {"id": 3, "name": "PulmonaryTuberculosis", "supercategory": "Tuberculosis"},
        ],
    }
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
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": cat,
                        "bbox": [x + j[0], yy + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                        "score": float(rng.beta(4, 2)),
                    }
                )
                n_tp += 1
        for _ in range(max(boxes_per_image - n_tp, 0)):
            w, h = rng.uniform(20, 200, 2)
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": [
                        float(rng.uniform(0, 512 - w)),
                        float(rng.uniform(0, 512 - h)),
                        float(w),
                        float(h),
                    ],
                    "score": float(rng.beta(1.5, 5)),
                }
            )
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
    pred_tb = {r.image_id for r, p in zip(recs, probs, strict=True) if p.argmax() == 2}
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
            dd = [
                dict(d)
                for d in dets
                if (cat is None or d["category_id"] == cat)
                and (mode == "tb_only" or d["image_id"] in pred_tb)
            ]
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


ROWS = [(m, r) for m in ("all_cxr", "tb_only") for r in ("agnostic", "active", "latent")]


def fce_six_rows(gt_path: Path, pred: Path) -> dict[str, list[float]]:
    """faster-coco-eval, the six protocol rows: ``{"mode/row": [AP, AP50]}`` (no tbx import)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = json.loads(Path(gt_path).read_text())
    dets = json.loads((pred / "bbox_result.json").read_text())
    probs = np.loadtxt(pred / "cls_result.txt", ndmin=2)
    cats_of: dict[int, set] = {}
    for a in gt["annotations"]:
        cats_of.setdefault(a["image_id"], set()).add(a["category_id"])
    tbx = [im for im in gt["images"] if not im["file_name"].startswith("extra/")]
    pred_tb = {im["id"] for im, p in zip(gt["images"], probs, strict=True) if p.argmax() == 2}
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        for mode in ("all_cxr", "tb_only"):
            cd = cg.loadRes(dets if mode == "tb_only" else [d for d in dets if d["image_id"] in pred_tb])
            ids = [im["id"] for im in tbx if mode == "all_cxr" or im["file_name"].startswith("tb/")]
            for row, cat in (("agnostic", None), ("active", 1), ("latent", 2)):
                e = COCOeval_faster(cg, cd, "bbox")
                # uncertain-type TB images (a category-3 box) leave the active/latent rows
                e.params.imgIds = ids if cat is None else [i for i in ids if 3 not in cats_of.get(i, ())]
                if cat is None:
                    e.params.useCats = 0  # category-agnostic: every box one class
                else:
                    e.params.catIds = [cat]
                e.evaluate()
                e.accumulate()
                e.summarize()
                out[f"{mode}/{row}"] = [float(e.stats[0]), float(e.stats[1])]
    return out


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # cwd = the repository: `python -m tbx` puts the working directory first on sys.path
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=REPO).stdout
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), out


def _pycocotools_bootstrap(rows, n_resamples: int, n_boot: int) -> tuple[float, float]:
    """A plain pycocotools bootstrap (COCOeval per row and resample), extrapolated to ``n_boot``."""
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_resamples):
        for g, dd, ids, cat in rows:
            # resample images with replacement: duplicated images get fresh ids
            pick = rng.choice(np.array(ids), size=len(ids), replace=True)
            gi = {im["id"]: im for im in g["images"]}
            ga: dict[int, list] = {}
            for a in g["annotations"]:
                ga.setdefault(a["image_id"], []).append(a)
            da: dict[int, list] = {}
            for d in dd:
                da.setdefault(d["image_id"], []).append(d)
            new_g = {"images": [], "annotations": [], "categories": g["categories"]}
            new_d = []
            for k, i in enumerate(pick.tolist()):
                new_g["images"].append({**gi[i], "id": k + 1})
                for a in ga.get(i, []):
                    new_g["annotations"].append({**a, "id": len(new_g["annotations"]) + 1, "image_id": k + 1})
                new_d += [{**d, "image_id": k + 1} for d in da.get(i, [])]
            coco_ap(new_g, new_d, list(range(1, len(pick) + 1)), cat)
    scale = n_boot / n_resamples
    return (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each process")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument(
        "--ref-resamples",
        type=int,
        default=0,
        help="pycocotools bootstrap resamples to time and extrapolate (0 = skip; ~10 s each)",
    )
    ap.add_argument("--boxes", type=int, default=30)
    ap.add_argument("--reference", nargs=2, metavar=("GT", "PRED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:  # the faster-coco-eval reference process
        print(json.dumps(fce_six_rows(Path(args.reference[0]), Path(args.reference[1]))))
        return
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        gt_path, pred = make_fixture(Path(tmp), args.boxes)
        n_img = len(json.loads(gt_path.read_text())["images"])
        n_det = len(json.loads((pred / "bbox_result.json").read_text()))
        print(f"fixture: {n_img} images, {n_det} detections ({time.perf_counter() - t0:.1f} s to build)")
        tbx = [
            sys.executable,
            "-m",
            "tbx",
            "bench",
            "--gt",
            str(gt_path),
            "--pred",
            str(pred),
            "--mode",
            "both",
        ]
        cmds = {
            "tbx": tbx,  # timed as the issue states it; the numbers come from one more run below
            "fce": [sys.executable, str(Path(__file__).resolve()), "--reference", str(gt_path), str(pred)],
            "boot": tbx + ["--bootstrap", str(args.boot)],
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        fce_out = ""
        for _ in range(args.repeats):
            for k, cmd in cmds.items():
                wall, cpu, out = _timed(cmd)
                runs[k].append((wall, cpu))
                fce_out = out if k == "fce" else fce_out
        med = {
            k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for k, v in runs.items()
        }
        low = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
        _timed(tbx + ["--json", str(Path(tmp) / "point.json")])  # (+ provenance.json: git calls)
        res = json.loads((Path(tmp) / "point.json").read_text())
        ours = {f"{m}/{r}": [res["detection"][m][r]["ap"], res["detection"][m][r]["ap50"]] for m, r in ROWS}
        fce = json.loads(fce_out.strip().splitlines()[-1])
        rows = _coco_rows(gt_path, pred)
        ref = {f"{m}/{r}": list(coco_ap(*row)) for (m, r), row in zip(ROWS, rows, strict=True)}
        d_coco = max(abs(a - b) for k in ref for a, b in zip(ref[k], ours[k], strict=True))
        d_fce = max(abs(a - b) for k in fce for a, b in zip(fce[k], ours[k], strict=True))
        for k in ("tbx", "fce", "boot"):
            print(
                f"{k:5s} wall median {med[k][0]:6.2f} s (min {low[k][0]:5.2f}) · "
                f"CPU median {med[k][1]:5.2f} s "
                f"(min {low[k][1]:5.2f})"
            )
        r_wall, r_cpu = med["tbx"][0] / med["fce"][0], med["tbx"][1] / med["fce"][1]
        b_wall, b_cpu = med["boot"][0] / med["tbx"][0], med["boot"][1] / med["tbx"][1]
        print(f"tbx / faster-coco-eval: {r_cpu:.2f} (CPU) / {r_wall:.2f} (wall), target ≤ 0.5")
        # the same ratio per interleaved round (each bootstrap run against that round's point run)
        per = [(b[0] / p[0], b[1] / p[1]) for p, b in zip(runs["tbx"], runs["boot"], strict=True)]
        b_rng = {k: (min(r[j] for r in per), max(r[j] for r in per)) for j, k in enumerate(("wall", "cpu"))}
        print(
            f"bootstrap {args.boot} / point: {b_cpu:.2f} (CPU) / {b_wall:.2f} (wall), target ≤ 2; "
            f"per round {b_rng['cpu'][0]:.2f}–{b_rng['cpu'][1]:.2f} (CPU), "
            f"{b_rng['wall'][0]:.2f}–{b_rng['wall'][1]:.2f} (wall)"
        )
        print(f"max |Δ AP, AP50| vs pycocotools {d_coco:.1e}, vs faster-coco-eval {d_fce:.1e}")
        lines = [
            f"Fixture: {n_img} images (2,800 TBX11K + 502 extra), {n_det:,} detections; "
            "whole processes, "
            f"{args.repeats} interleaved runs each, medians (CPU = user + sys of the process; "
            "the machine is shared, so wall time is noisier).",
            "",
            "| process | wall s (median / min) | CPU s (median / min) |",
            "|---|---|---|",
            f"| `tbx bench --mode both` | {med['tbx'][0]:.2f} / {low['tbx'][0]:.2f} | "
            f"{med['tbx'][1]:.2f} / {low['tbx'][1]:.2f} |",
            f"| faster-coco-eval, same six rows | {med['fce'][0]:.2f} / {low['fce'][0]:.2f} | "
            f"{med['fce'][1]:.2f} / {low['fce'][1]:.2f} |",
            f"| `tbx bench --mode both --bootstrap {args.boot}` | "
            f"{med['boot'][0]:.2f} / {low['boot'][0]:.2f} | "
            f"{med['boot'][1]:.2f} / {low['boot'][1]:.2f} |",
            "",
            "| ratio | CPU | wall | target |",
            "|---|---|---|---|",
            f"| tbx / faster-coco-eval | {r_cpu:.2f} | {r_wall:.2f} | ≤ 0.5 |",
            f"| bootstrap {args.boot} / point | {b_cpu:.2f} | {b_wall:.2f} | ≤ 2 |",
            f"| bootstrap {args.boot} / point, per round (min–max) | "
            f"{b_rng['cpu'][0]:.2f}–{b_rng['cpu'][1]:.2f} | "
            f"{b_rng['wall'][0]:.2f}–{b_rng['wall'][1]:.2f} | ≤ 2 |",
            "",
            f"Six rows' AP and AP50: max |Δ| vs pycocotools = {d_coco:.1e}, "
            f"vs faster-coco-eval = {d_fce:.1e}.",
        ]
        if args.ref_resamples > 0:
            t_ref, c_ref = _pycocotools_bootstrap(rows, args.ref_resamples, args.boot)
            print(
                f"pycocotools bootstrap (extrapolated from {args.ref_resamples} resamples): "
                f"{t_ref:.0f} s wall, "
                f"{c_ref:.0f} s CPU"
            )
            lines.append(
                f"A plain pycocotools bootstrap (COCOeval per row and resample, extrapolated from "
                f"{args.ref_resamples} resamples to {args.boot}) would take {c_ref:.0f} s CPU."
            )
    from _results import update_results

    update_results("bench_eval", lines)


if __name__ == "__main__":
    main()
