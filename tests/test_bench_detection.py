"""Detection metrics (docs/protocol.md §4.3) against direct pycocotools calls on fixtures built from the real
TBX11K boxes, plus hand-made cases for the all-cxr filter, the uncertain rule, FROC and the error
analysis."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tbx.bench.detection import IOU_THRS, LOC_IOU, GroundTruth, RowEval, accumulate, match
from tbx.bench.protocol import BenchConfig, GroundTruthSet, _Scored, evaluate
from tbx.bench.results_io import Detections, write_bbox_result, write_cls_result
from tbx.bench.stats import bootstrap_counts

CATS = [
    {"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
    {"id": 2, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
    {"id": 3, "name": "PulmonaryTuberculosis", "supercategory": "Tuberculosis"},
]


@pytest.fixture(scope="module")
def real_fixture(shared_data, tmp_path_factory):
    """~200 images (real TB boxes of TBX11K_train.json, perturbed detections, score ties,
    one image with 150 detections) → (gt path, pred dir, gt dict, dets list, probs)."""
    rng = np.random.default_rng(0)
    src = json.loads((shared_data / "tbx11k-meta" / "TBX11K_train.json").read_text())
    anns: dict[int, list] = {}
    for a in src["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    tb = [im for im in src["images"] if im["file_name"].startswith("tb/") and im["id"] in anns][:70]
    images, annotations = [], []
    # shuffled ids so that file order ≠ id order
    ids = rng.permutation(np.arange(1, 221)).tolist()
    kinds = ["t"] * 70 + ["h"] * 60 + ["s"] * 60 + ["x"] * 30
    for k, (kind, iid) in enumerate(zip(kinds, ids)):
        if kind == "t":
            im = tb[k]
            fn = f"tb/{Path(im['file_name']).name}"
            for a in anns[im["id"]]:
                cat = 3 if k < 4 else a["category_id"]  # 4 uncertain-type TB images
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": iid,
                        "category_id": cat,
                        "bbox": a["bbox"],
                        "area": a["bbox"][2] * a["bbox"][3],
                        "iscrowd": 0,
                    }
                )
        elif kind == "h":
            fn = f"health/h{k:04d}.png"
        elif kind == "s":
            fn = f"sick/s{k:04d}.png"
        else:
            fn = f"extra/mc+shenzhen/test/CHNCXR_{k:04d}_{k % 2}.png"
        images.append({"id": iid, "file_name": fn, "width": 512, "height": 512})
    gt = {"images": images, "annotations": annotations, "categories": CATS}
    by_img: dict[int, list] = {}
    for a in annotations:
        by_img.setdefault(a["image_id"], []).append(a)
    dets = []
    for n, im in enumerate(images):
        for a in by_img.get(im["id"], []):
            for _ in range(int(rng.integers(0, 3))):
                x, y, w, h = a["bbox"]
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                cat = int(rng.integers(1, 3)) if rng.random() < 0.3 else min(a["category_id"], 2)
                dets.append(
                    {
                        "image_id": im["id"],
                        "category_id": cat,
                        "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                        "score": round(float(rng.uniform(0.2, 1.0)), 2),
                    }
                )  # rounded → ties
        n_fp = 150 if n == 5 else int(rng.integers(0, 8))
        for _ in range(n_fp):
            w, h = rng.uniform(10, 150, 2)
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": [
                        float(rng.uniform(0, 500 - w)),
                        float(rng.uniform(0, 500 - h)),
                        float(w),
                        float(h),
                    ],
                    "score": round(float(rng.uniform(0, 0.9)), 2),
                }
            )
    y = np.array(
        [
            0
            if "health" in im["file_name"] or "_0" in im["file_name"]
            else 1
            if "sick" in im["file_name"]
            else 2
            for im in images
        ]
    )
    logits = rng.normal(0, 1, (len(images), 3))
    logits[np.arange(len(images)), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    root = tmp_path_factory.mktemp("detfx")
    (root / "gt.json").write_text(json.dumps(gt))
    write_cls_result(root / "pred" / "cls_result.txt", probs)
    write_bbox_result(root / "pred" / "bbox_result.json", dets)
    return root / "gt.json", root / "pred", gt, dets, probs


def coco_eval(gt: dict, dets: list, img_ids: list[int], cat: int | None, iou_thrs=None) -> COCOeval:
    """Plain pycocotools: category-agnostic (cat None) = every GT and detection relabelled 1."""
    g = copy.deepcopy(gt)
    dd = [dict(d) for d in dets if cat is None or d["category_id"] == cat]
    if cat is None:
        for a in g["annotations"]:
            a["category_id"] = 1
        for d in dd:
            d["category_id"] = 1
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = g
        cg.createIndex()
        cd = cg.loadRes(dd)
        e = COCOeval(cg, cd, "bbox")
        e.params.imgIds = img_ids
        e.params.catIds = [cat or 1]
        if iou_thrs is not None:
            e.params.iouThrs = np.asarray(iou_thrs)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def protocol_rows(gt, dets, probs, keep_uncertain=False):
    """(mode, row, image ids, category, detections) of the six rows, derived independently."""
    from tbx.data.layout import label_from_path

    lab = {im["id"]: label_from_path(im["file_name"]) for im in gt["images"]}
    tbx = [im["id"] for im in gt["images"] if lab[im["id"]][1] == "tbx11k"]
    pred_tb = {im["id"] for im, p in zip(gt["images"], probs) if p.argmax() == 2}
    cats = {}
    for a in gt["annotations"]:
        cats.setdefault(a["image_id"], set()).add(a["category_id"])
    unc = {i for i, c in cats.items() if 3 in c}
    out = []
    for mode in ("all_cxr", "tb_only"):
        for row, cat in (("agnostic", None), ("active", 1), ("latent", 2)):
            ids = [i for i in tbx if mode == "all_cxr" or lab[i][0] == "tb"]
            if cat is not None and not keep_uncertain:
                ids = [i for i in ids if i not in unc]
            dd = [d for d in dets if mode == "tb_only" or d["image_id"] in pred_tb]
            out.append((mode, row, ids, cat, dd))
    return out


@pytest.mark.parametrize("keep_uncertain", [False, True])
def test_protocol_equals_cocoeval(real_fixture, keep_uncertain):
    gt_path, pred, gt, dets, probs = real_fixture
    res = evaluate(gt_path, pred, BenchConfig(keep_uncertain=keep_uncertain))
    for mode, row, ids, cat, dd in protocol_rows(gt, dets, probs, keep_uncertain):
        e = coco_eval(gt, dd, ids, cat)
        r = res["detection"][mode][row]
        assert r["ap"] == pytest.approx(e.stats[0], abs=1e-9), (mode, row)
        assert r["ap50"] == pytest.approx(e.stats[1], abs=1e-9), (mode, row)
        assert r["ap75"] == pytest.approx(e.stats[2], abs=1e-9), (mode, row)
        assert r["ar100"] == pytest.approx(e.stats[8], abs=1e-9), (mode, row)
        np.testing.assert_allclose(r["pr"]["iou50"], e.eval["precision"][0, :, 0, 0, 2], atol=1e-9)
        np.testing.assert_allclose(r["pr"]["iou75"], e.eval["precision"][5, :, 0, 0, 2], atol=1e-9)
        assert r["n_images"] == len(ids)
        # error analysis "Loc" = PR at IoU .1 (pycocotools with iouThrs=[.1])
        e_loc = coco_eval(gt, dd, ids, cat, iou_thrs=[LOC_IOU])
        p_loc = e_loc.eval["precision"][0, :, 0, 0, 2]
        loc = np.where(p_loc == -1, 0, p_loc)
        np.testing.assert_allclose(r["analysis"]["Loc"]["precision"], loc, atol=1e-9)
        c75 = np.maximum(e.eval["precision"][5, :, 0, 0, 2], 0)
        assert r["analysis"]["C75"]["ap"] == pytest.approx(c75.mean(), abs=1e-9)
        assert r["analysis"]["FN"]["ap"] == 1.0


def test_accumulate_equals_cocoeval_accumulate(real_fixture):
    """Our matching + accumulate vs COCOeval.evaluate + COCOeval.accumulate, full arrays."""
    gt_path, _, gt, dets, _ = real_fixture
    ids = sorted(im["id"] for im in gt["images"])
    e = coco_eval(gt, dets, ids, 1)
    g = GroundTruth.build(
        (im["id"], [(*a["bbox"], a["category_id"]) for a in gt["annotations"] if a["image_id"] == im["id"]])
        for im in gt["images"]
    )
    d = Detections(
        np.array([x["image_id"] for x in dets]),
        np.array([x["category_id"] for x in dets]),
        np.array([x["bbox"] for x in dets], float),
        np.array([x["score"] for x in dets], float),
    )
    m = match(g, d, {1}, {1})
    prec, rec = accumulate(m)
    np.testing.assert_allclose(prec, e.eval["precision"][:, :, 0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(rec, e.eval["recall"][:, 0, 0, 2], atol=1e-12)
    # matches of evaluateImg, image by image (dtMatches ≠ 0 ⇔ TP here, no ignored GT)
    n_tp = sum(
        int((ev["dtMatches"] > 0).sum())
        for ev in e.evalImgs
        if ev is not None and ev["aRng"][0] == 0 and ev["aRng"][1] > 1e9
    )
    assert n_tp == int(m.tp.sum())


@pytest.mark.parametrize("fast", [True, False])
def test_bootstrap_weights_equal_cocoeval_on_duplicated_images(real_fixture, fast):
    """A resample computed from match arrays + counts = COCOeval on a dataset with the images copied.

    Scores are made distinct first: with ties *within* an image, COCOeval orders the copies of an
    image one after the other while a weight keeps tied detections of the copies together — both
    are valid orders of tied detections, only the tie-free case has a unique answer.
    """
    gt_path, pred0, gt, dets, probs = real_fixture
    dets = [{**d, "score": d["score"] + 1e-7 * k} for k, d in enumerate(dets)]
    pred = gt_path.parent / "pred_untied"
    write_cls_result(pred / "cls_result.txt", probs)
    write_bbox_result(pred / "bbox_result.json", dets)
    cfg = BenchConfig()
    truth = GroundTruthSet(gt_path)
    scored = _Scored(truth, pred, cfg)
    counts = bootstrap_counts(len(truth.records), 2, seed=11)
    rows = {(mo, r, cat): (ids, dd) for mo, r, ids, cat, dd in protocol_rows(gt, dets, probs)}
    for (mode, row, cat), (ids, dd) in rows.items():
        if (mode, row) not in (("all_cxr", "agnostic"), ("tb_only", "active")):
            continue
        ev: RowEval = scored.rows[mode][row]
        ev._fast = fast
        s = ev.samples(counts[:, truth.univ_to_rec])
        rec_pos = {r.image_id: i for i, r in enumerate(truth.records)}
        for b in range(2):
            # copies of an image get consecutive new ids, in ascending original id order
            new_imgs, new_anns, new_dets, new_ids = [], [], [], []
            dd_by = {}
            for x in dd:
                dd_by.setdefault(x["image_id"], []).append(x)
            ann_by = {}
            for a in gt["annotations"]:
                ann_by.setdefault(a["image_id"], []).append(a)
            for iid in sorted(ids):
                for _ in range(int(counts[b, rec_pos[iid]])):
                    nid = len(new_imgs) + 1
                    new_ids.append(nid)
                    new_imgs.append({"id": nid, "file_name": f"x{nid}.png", "width": 512, "height": 512})
                    for a in ann_by.get(iid, []):
                        new_anns.append({**a, "id": len(new_anns) + 1, "image_id": nid})
                    new_dets += [{**x, "image_id": nid} for x in dd_by.get(iid, [])]
            e = coco_eval(
                {"images": new_imgs, "annotations": new_anns, "categories": CATS}, new_dets, new_ids, cat
            )
            assert s["ap"][b] == pytest.approx(e.stats[0], abs=1e-9)
            assert s["ap50"][b] == pytest.approx(e.stats[1], abs=1e-9)
            assert s["ar100"][b] == pytest.approx(e.stats[8], abs=1e-9)


# --------------------------------------------------------------------------- hand-made cases
def small_case(tmp_path: Path, images, anns, dets, probs) -> tuple[Path, Path]:
    gt = {
        "images": [{"id": i, "file_name": fn, "width": 512, "height": 512} for i, fn in images],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(anns)
        ],
        "categories": CATS,
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    pred = tmp_path / "pred"
    if probs is not None:
        write_cls_result(pred / "cls_result.txt", np.array(probs, float))
    write_bbox_result(
        pred / "bbox_result.json",
        [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets],
    )
    return tmp_path / "gt.json", pred


A = [100.0, 100.0, 50.0, 50.0]
B = [300.0, 300.0, 40.0, 60.0]
TB_P, NON_P = [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]


def test_all_cxr_filter_by_hand(tmp_path):
    images = [(1, "tb/a.png"), (2, "tb/b.png"), (3, "health/c.png")]
    anns = [(1, 1, A), (2, 1, B)]
    dets = [(1, 1, A, 0.9), (2, 1, B, 0.8), (3, 1, A, 0.95)]
    gt, pred = small_case(tmp_path, images, anns, dets, [TB_P, NON_P, NON_P])
    res = evaluate(gt, pred, BenchConfig())
    # all-cxr: img 2 (TB, predicted non-TB) and img 3 lose their boxes → one TP of two GT boxes:
    # precision 1 up to recall .5 → 51 of 101 recall points
    assert res["detection"]["all_cxr"]["agnostic"]["ap50"] == pytest.approx(51 / 101)
    assert res["detection"]["all_cxr"]["agnostic"]["ap"] == pytest.approx(51 / 101)
    assert res["detection"]["all_cxr"]["agnostic"]["ar100"] == pytest.approx(0.5)
    assert res["detection"]["all_cxr"]["agnostic"]["n_images"] == 3
    # tb-only: TB images 1, 2, no filter → both boxes found, nothing else
    assert res["detection"]["tb_only"]["agnostic"]["ap50"] == pytest.approx(1.0)
    assert res["detection"]["tb_only"]["agnostic"]["n_images"] == 2
    # image 3 predicted TB: its FP (score .95) comes first → precision .5 up to recall .5
    (pred / "cls_result.txt").unlink()
    write_cls_result(pred / "cls_result.txt", np.array([TB_P, NON_P, TB_P]))
    res = evaluate(gt, pred, BenchConfig())
    assert res["detection"]["all_cxr"]["agnostic"]["ap50"] == pytest.approx(51 * 0.5 / 101)
    # latent row has no ground truth → AP undefined (null), like COCO's −1
    assert res["detection"]["all_cxr"]["latent"]["ap"] is None


def test_all_cxr_needs_cls_result(tmp_path):
    gt, pred = small_case(tmp_path, [(1, "tb/a.png")], [(1, 1, A)], [(1, 1, A, 0.9)], None)
    from tbx.errors import TbxError

    with pytest.raises(TbxError, match="all-cxr detection needs cls_result.txt"):
        evaluate(gt, pred, BenchConfig(mode="all-cxr"))
    res = evaluate(gt, pred, BenchConfig(mode="both"))
    assert list(res["detection"]) == ["tb_only"]
    assert any("all-cxr detection skipped" in n for n in res["notes"])
    assert "classification" not in res


def test_uncertain_rule_by_hand(tmp_path):
    images = [(1, "tb/a.png"), (2, "tb/u.png"), (3, "health/c.png")]
    anns = [(1, 1, A), (2, 3, B)]  # image 2: uncertain-type TB
    dets = [(1, 1, A, 0.9), (2, 1, B, 0.95)]
    gt, pred = small_case(tmp_path, images, anns, dets, [TB_P, TB_P, NON_P])
    res = evaluate(gt, pred, BenchConfig(mode="tb-only"))
    d = res["detection"]["tb_only"]
    assert d["active"]["ap"] == pytest.approx(1.0)  # image 2 left out
    assert d["active"]["n_images"] == 1
    assert d["agnostic"]["ap"] == pytest.approx(1.0)  # uncertain box found by the .95 detection
    assert d["agnostic"]["n_gt"] == 2
    res = evaluate(gt, pred, BenchConfig(mode="tb-only", keep_uncertain=True))
    d = res["detection"]["tb_only"]
    # the active detection on the uncertain box is now an FP ranked first: precision .5 everywhere
    assert d["active"]["ap"] == pytest.approx(0.5)
    assert d["active"]["n_images"] == 2


def test_froc_by_hand(tmp_path):
    images = [(1, "tb/a.png"), (2, "tb/b.png")]
    anns = [(1, 1, A), (2, 1, B)]
    far = [400.0, 10.0, 30.0, 30.0]
    dets = [(1, 1, A, 0.9), (1, 1, far, 0.8), (2, 1, far, 0.7), (2, 1, B, 0.6)]
    gt, pred = small_case(tmp_path, images, anns, dets, [TB_P, TB_P])
    r = evaluate(gt, pred, BenchConfig(mode="tb-only"))["detection"]["tb_only"]["agnostic"]
    # curve (FP/img, sens): (0,0) (0,.5) (.5,.5) (1,.5) (1,1)
    assert r["froc_curve"]["fppi"] == [0, 0, 0.5, 1.0, 1.0]
    assert r["froc_curve"]["sensitivity"] == [0, 0.5, 0.5, 0.5, 1.0]
    assert r["froc"]["sensitivity"] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert r["froc"]["mean"] == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)


def test_froc_ties_are_not_split(tmp_path):
    images = [(1, "tb/a.png"), (2, "tb/b.png")]
    anns = [(1, 1, A), (2, 1, B)]
    far = [400.0, 10.0, 30.0, 30.0]
    dets = [(1, 1, A, 0.9), (2, 1, far, 0.9)]  # a TP and an FP with the same score
    gt, pred = small_case(tmp_path, images, anns, dets, [TB_P, TB_P])
    r = evaluate(gt, pred, BenchConfig(mode="tb-only"))["detection"]["tb_only"]["agnostic"]
    assert r["froc_curve"]["fppi"] == [0, 0.5] and r["froc_curve"]["sensitivity"] == [0, 0.5]
    assert r["froc"]["sensitivity"][:2] == [0, 0]  # 0.125, 0.25 FP/img: threshold above .9 only


def test_error_analysis_by_hand(tmp_path):
    # image 1: active box A and latent box B; an active detection on B (class confusion, .9),
    # one on A (.8) and one loosely on A (IoU ~.3: a localisation error, .7)
    loose = [125.0, 125.0, 50.0, 50.0]
    images = [(1, "tb/a.png")]
    anns = [(1, 1, A), (1, 2, B)]
    dets = [(1, 1, B, 0.9), (1, 1, A, 0.8), (1, 1, loose, 0.7)]
    gt, pred = small_case(tmp_path, images, anns, dets, [TB_P])
    r = evaluate(gt, pred, BenchConfig(mode="tb-only"))["detection"]["tb_only"]["active"]
    an = r["analysis"]
    # C50: FP(.9) TP(.8) FP(.7): recall 1 reached at precision .5
    assert an["C50"]["ap"] == pytest.approx(0.5)
    # Loc (IoU .1): the loose detection finds no free box (A already matched) → same as C50
    assert an["Loc"]["ap"] == pytest.approx(0.5)
    # Oth: the detection on the latent box is ignored → TP first → precision 1
    assert an["Oth"]["ap"] == pytest.approx(1.0)
    assert an["BG"]["ap"] == 1.0 and an["FN"]["ap"] == 1.0
    assert set(an) == {"C75", "C50", "Loc", "Oth", "BG", "FN"}
    assert len(an["C50"]["precision"]) == 101


def test_loc_counts_loose_boxes(tmp_path):
    loose = [125.0, 125.0, 50.0, 50.0]  # IoU with A = 625/4375 ≈ .14
    gt, pred = small_case(tmp_path, [(1, "tb/a.png")], [(1, 1, A)], [(1, 1, loose, 0.9)], [TB_P])
    an = evaluate(gt, pred, BenchConfig(mode="tb-only"))["detection"]["tb_only"]["active"]["analysis"]
    assert an["C50"]["ap"] == 0.0 and an["Loc"]["ap"] == pytest.approx(1.0)


def test_match_thresholds_vectorised_like_cocoeval():
    """Two GT, detections competing for them: our vectorised matching = COCOeval per threshold."""
    gt = {
        "images": [{"id": 1, "width": 512, "height": 512, "file_name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 1e4, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 0, 100, 100], "area": 1e4, "iscrowd": 0},
        ],
        "categories": CATS,
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 0, 100, 100], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 95, 100], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [25, 5, 100, 100], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [10, 0, 100, 100], "score": 0.7},
    ]
    e = coco_eval(gt, dets, [1], 1)
    g = GroundTruth.build([(1, [(*a["bbox"], 1) for a in gt["annotations"]])])
    d = Detections(
        np.ones(4, int),
        np.ones(4, int),
        np.array([x["bbox"] for x in dets], float),
        np.array([x["score"] for x in dets]),
    )
    m = match(g, d, None, None)
    ev = e.evalImgs[0]
    np.testing.assert_array_equal(m.tp[:, np.argsort(-m.score, kind="mergesort")], ev["dtMatches"] > 0)
    prec, _ = accumulate(m)
    np.testing.assert_allclose(prec, e.eval["precision"][:, :, 0, 0, 2])
    assert np.array_equal(m.iou_thrs, IOU_THRS)


def test_edge_cases_empty_detections_and_no_tbx11k_images(tmp_path):
    from tbx.io import dumps_json

    gt, pred = small_case(tmp_path, [(1, "tb/a.png"), (2, "health/b.png")], [(1, 1, A)], [], [TB_P, NON_P])
    res = evaluate(gt, pred, BenchConfig())
    r = res["detection"]["tb_only"]["agnostic"]
    assert r["ap"] == 0.0 and r["ar100"] == 0.0 and r["froc"]["sensitivity"] == [0.0] * 7
    dumps_json(res)  # JSON-clean (no NaN)
    sub = tmp_path / "extra_only"
    sub.mkdir()
    gt, pred = small_case(
        sub,
        [(1, "extra/da+db/test/p1.png"), (2, "extra/da+db/test/n2.png")],
        [],
        [(1, 1, A, 0.5)],
        [TB_P, NON_P],
    )
    res = evaluate(gt, pred, BenchConfig())
    assert res["detection"]["all_cxr"]["agnostic"]["ap"] is None
    assert res["detection"]["all_cxr"]["agnostic"]["n_images"] == 0
    assert any("extra-dataset images ignored" in n for n in res["notes"])
    dumps_json(res)
    res = evaluate(gt, pred, BenchConfig(bootstrap=5))
    dumps_json(res)
    assert res["ci"]["detection"]["all_cxr"]["agnostic"]["ap"] == [None, None]
